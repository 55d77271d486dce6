//! Accelerator choice, like KubeVirt's `useEmulation`: KVM only where it really works, TCG
//! where it does not and emulation is allowed. The choice and its reason are reported (they
//! become the VMI's `SoftwareEmulation` condition).
//!
//! An openable `/dev/kvm` is not enough: on PVM hosts (`kvm_pvm`, pagetable-based nested
//! virtualization) `KVM_CREATE_VM` succeeds but stock guest kernels never boot, and the CPU
//! has no `vmx`/`svm` flag. So KVM needs all of: `/dev/kvm` opens read-write, no
//! `/sys/module/kvm_pvm`, and `vmx` or `svm` in /proc/cpuinfo.

use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccelChoice {
    pub accelerator: Accelerator,
    /// Why: "KVM is usable" or why it is not.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hardware virtualization is not usable ({reason}) and software emulation is not allowed (useEmulation is off)")]
pub struct AccelError {
    pub reason: String,
}

/// Where to look; tests point these at fake files.
#[derive(Clone, Debug)]
pub struct HostProbe {
    pub dev_kvm: PathBuf,
    pub pvm_module: PathBuf,
    pub cpuinfo: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        HostProbe {
            dev_kvm: "/dev/kvm".into(),
            pvm_module: "/sys/module/kvm_pvm".into(),
            cpuinfo: "/proc/cpuinfo".into(),
        }
    }
}

/// Why KVM cannot be used here, or `None` when it can.
pub fn kvm_unusable(probe: &HostProbe) -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&probe.dev_kvm)
    {
        return Some(format!("cannot open {}: {e}", probe.dev_kvm.display()));
    }
    if probe.pvm_module.exists() {
        return Some(format!(
            "{} is provided by kvm_pvm ({} exists), which runs only PVM-enabled guest kernels",
            probe.dev_kvm.display(),
            probe.pvm_module.display()
        ));
    }
    let cpuinfo = std::fs::read_to_string(&probe.cpuinfo).unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_flag {
        return Some(format!(
            "the CPU has no vmx/svm flag in {}",
            probe.cpuinfo.display()
        ));
    }
    None
}

pub fn choose(allow_emulation: bool) -> Result<AccelChoice, AccelError> {
    choose_with(&HostProbe::default(), allow_emulation)
}

/// The accelerator for a guest of architecture `guest` (`None`: unknown, the machine spec
/// refuses it later): a guest of another architecture than the host's always runs under TCG
/// (KVM runs only the host's own instruction set).
pub fn choose_for(
    guest: Option<kubevirt_api::arch::Arch>,
    allow_emulation: bool,
) -> Result<AccelChoice, AccelError> {
    let host = kubevirt_api::arch::Arch::host();
    match guest {
        Some(g) if host != Some(g) => Ok(AccelChoice {
            accelerator: Accelerator::Tcg,
            reason: format!(
                "software emulation (TCG): the guest is {g}, this host is {}",
                std::env::consts::ARCH
            ),
        }),
        _ => choose(allow_emulation),
    }
}

pub fn choose_with(probe: &HostProbe, allow_emulation: bool) -> Result<AccelChoice, AccelError> {
    match kvm_unusable(probe) {
        None => Ok(AccelChoice {
            accelerator: Accelerator::Kvm,
            reason: "KVM is usable".into(),
        }),
        Some(reason) if allow_emulation => Ok(AccelChoice {
            accelerator: Accelerator::Tcg,
            reason: format!("software emulation (TCG): {reason}"),
        }),
        Some(reason) => Err(AccelError { reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn probe(dir: &Path, kvm: bool, pvm: bool, flags: &str) -> HostProbe {
        let p = HostProbe {
            dev_kvm: dir.join("kvm"),
            pvm_module: dir.join("kvm_pvm"),
            cpuinfo: dir.join("cpuinfo"),
        };
        if kvm {
            std::fs::write(&p.dev_kvm, "").unwrap();
        }
        if pvm {
            std::fs::create_dir(&p.pvm_module).unwrap();
        }
        std::fs::write(
            &p.cpuinfo,
            format!("processor : 0\nflags : fpu {flags} sse\n"),
        )
        .unwrap();
        p
    }

    #[test]
    fn pvm_is_not_kvm() {
        let d = tempfile::tempdir().unwrap();
        let c = choose_with(&probe(d.path(), true, true, "lm"), true).unwrap();
        assert_eq!(c.accelerator, Accelerator::Tcg);
        assert!(c.reason.contains("kvm_pvm"), "{}", c.reason);
    }

    #[test]
    fn kvm_needs_vmx_or_svm() {
        let d = tempfile::tempdir().unwrap();
        let c = choose_with(&probe(d.path(), true, false, "lm"), true).unwrap();
        assert_eq!(c.accelerator, Accelerator::Tcg);
        let d = tempfile::tempdir().unwrap();
        let c = choose_with(&probe(d.path(), true, false, "vmx"), true).unwrap();
        assert_eq!(c.accelerator, Accelerator::Kvm);
    }

    #[test]
    fn no_emulation_is_an_error_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let e = choose_with(&probe(d.path(), false, false, "vmx"), false).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
    }

    #[test]
    fn this_host_is_detected_without_panicking() {
        let c = choose(true).unwrap();
        eprintln!("this host: {c:?}");
    }
}
