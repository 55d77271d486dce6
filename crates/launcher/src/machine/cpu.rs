//! `spec.domain.cpu` and `spec.domain.memory` → [`CpuSpec`], [`MemorySpec`].

use super::*;

/// A CPU or memory field the QEMU backend cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    #[error("spec.domain.cpu.model: {model:?} is not a CPU model name ([A-Za-z0-9_.-]+)")]
    ModelName { model: String },
    #[error("spec.domain.cpu.model: CPU model {model} is not known to QEMU")]
    UnknownModel { model: String },
    #[error("spec.domain.cpu.model: machine type microvm under emulation needs CPU model max (the kernel hangs calibrating the TSC otherwise), not {model}")]
    MicrovmNeedsMax { model: String },
    #[error("spec.domain.cpu.model: currently, host-passthrough is the only model supported on Arm64, not {model:?}")]
    Arm64Model { model: String },
    /// `field` is `spec.domain.cpu.features[i].policy`.
    #[error("{field}: unknown policy {policy}")]
    FeaturePolicy { field: String, policy: String },
    /// `field` is `spec.domain.cpu.features[i].name`.
    #[error("{field}: {name:?} is not a CPU feature name ([A-Za-z0-9_.-]+)")]
    FeatureName { field: String, name: String },
    /// `field` is `spec.domain.cpu.sockets`, `.cores` or `.threads`.
    #[error("{field}: {count} must be between 1 and 512")]
    Topology { field: &'static str, count: i64 },
    #[error("spec.domain.cpu.maxSockets: {max_sockets} is less than spec.domain.cpu.sockets ({sockets}): raise maxSockets or leave it unset")]
    MaxSockets { max_sockets: i64, sockets: u32 },
    #[error("spec.domain.cpu.maxSockets: {max_sockets} sockets of {per_socket} vCPUs exceed 512 vCPUs: lower maxSockets")]
    TooManyVcpus { max_sockets: u32, per_socket: u32 },
    #[error("spec.domain.memory.maxGuest: {reason}")]
    MaxGuest { reason: String },
    #[error("spec.domain.memory.guest: no memory requested: set spec.domain.memory.guest or spec.domain.resources.requests.memory")]
    NoMemory,
    #[error(transparent)]
    MemorySize(#[from] SizeError),
    #[error("spec.domain.memory.guest: at least 16Mi of guest memory is needed")]
    TooLittleMemory,
    #[error("spec.domain.memory.hugepages.pageSize: {page_size}: {reason}")]
    HugepageSize { page_size: String, reason: String },
    #[error("spec.domain.memory.hugepages.pageSize: {page_size}: only 2Mi and 1Gi pages exist on x86_64")]
    HugepageUnsupported { page_size: String },
    #[error("spec.domain.memory.hugepages.pageSize: {page_size}: no hugetlbfs of this page size is mounted on this node (as root: mount -t hugetlbfs -o pagesize={option} none {mount}, and reserve pages in /sys/kernel/mm/hugepages)")]
    NoHugetlbfs {
        page_size: String,
        mount: &'static str,
        option: &'static str,
    },
    #[error("spec.domain.memory.guest: guest memory ({bytes} bytes) is not a multiple of the hugepage size {page_size}")]
    NotHugepageMultiple { bytes: u64, page_size: String },
}

impl CpuError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            CpuError::ModelName { .. }
            | CpuError::UnknownModel { .. }
            | CpuError::MicrovmNeedsMax { .. }
            | CpuError::Arm64Model { .. } => "spec.domain.cpu.model",
            CpuError::FeaturePolicy { field, .. } | CpuError::FeatureName { field, .. } => field,
            CpuError::Topology { field, .. } => field,
            CpuError::MaxSockets { .. } | CpuError::TooManyVcpus { .. } => {
                "spec.domain.cpu.maxSockets"
            }
            CpuError::MaxGuest { .. } => "spec.domain.memory.maxGuest",
            CpuError::NoMemory
            | CpuError::TooLittleMemory
            | CpuError::NotHugepageMultiple { .. } => "spec.domain.memory.guest",
            CpuError::MemorySize(e) => e.field(),
            CpuError::HugepageSize { .. }
            | CpuError::HugepageUnsupported { .. }
            | CpuError::NoHugetlbfs { .. } => "spec.domain.memory.hugepages.pageSize",
        }
    }
}

/// A socket/core/thread count: unset or 0 is 1.
fn positive(v: Option<i64>, field: &'static str) -> Result<u32, CpuError> {
    match v {
        None | Some(0) => Ok(1),
        Some(n) if n > 0 && n <= 512 => Ok(n as u32),
        Some(n) => Err(CpuError::Topology { field, count: n }),
    }
}

pub(super) fn cpu_and_memory(ctx: &Ctx) -> Result<(CpuSpec, MemorySpec), CpuError> {
    let domain = &ctx.vmi.spec.domain;
    let (env, microvm) = (ctx.env, ctx.microvm);
    // CPU.
    let cpu = domain.cpu.clone().unwrap_or_default();
    let requested_model = cpu.model.clone().unwrap_or_else(|| "host-model".into());
    // KubeVirt's arm64 rule; under TCG it becomes `max` (every Armv8/v9 feature TCG emulates).
    if ctx.profile == Profile::Virt && requested_model != "host-passthrough" {
        return Err(CpuError::Arm64Model {
            model: requested_model,
        });
    }
    let model = match (requested_model.as_str(), env.accelerator) {
        ("host-model" | "host-passthrough", Accelerator::Kvm) => "host".to_string(),
        // Under TCG there is no host CPU to copy: `max` enables everything TCG emulates.
        ("host-model" | "host-passthrough", Accelerator::Tcg) => "max".to_string(),
        (m, _) => {
            if !crate::qemu::opts::is_cpu_name(m) {
                return Err(CpuError::ModelName { model: m.into() });
            }
            if let Some(known) = &env.qemu_cpu_models {
                if !known.contains(m) && m != "max" {
                    return Err(CpuError::UnknownModel { model: m.into() });
                }
            }
            m.to_string()
        }
    };
    if microvm && env.accelerator == Accelerator::Tcg && model != "max" {
        return Err(CpuError::MicrovmNeedsMax { model });
    }
    let mut features = Vec::new();
    for (i, f) in cpu.features.iter().flatten().enumerate() {
        let sign = match f.policy.as_deref().unwrap_or("require") {
            "require" | "force" | "optional" => '+',
            "disable" | "forbid" => '-',
            p => {
                return Err(CpuError::FeaturePolicy {
                    field: format!("spec.domain.cpu.features[{i}].policy"),
                    policy: p.into(),
                })
            }
        };
        if !crate::qemu::opts::is_cpu_name(&f.name) {
            return Err(CpuError::FeatureName {
                field: format!("spec.domain.cpu.features[{i}].name"),
                name: f.name.clone(),
            });
        }
        features.push(format!("{sign}{}", f.name));
    }
    let sockets = positive(cpu.sockets, "spec.domain.cpu.sockets")?;
    let cores = positive(cpu.cores, "spec.domain.cpu.cores")?;
    let threads = positive(cpu.threads, "spec.domain.cpu.threads")?;
    let max_sockets = match cpu.max_sockets {
        // microvm and QEMU's arm virt machine (before QEMU 10) have no CPU hotplug: the
        // machine keeps its boot topology.
        // s390x: QEMU could plug s390x-cpu devices, but the launcher's hotplug is not tried
        // there (docs/architectures.md).
        _ if microvm || matches!(ctx.profile, Profile::Virt | Profile::S390Ccw) => sockets,
        None | Some(0) => sockets,
        Some(m) if m < i64::from(sockets) => {
            return Err(CpuError::MaxSockets {
                max_sockets: m,
                sockets,
            })
        }
        Some(m) => {
            let per_socket = cores * threads;
            match u32::try_from(m) {
                Ok(m) if u64::from(m) * u64::from(per_socket) <= 512 => m,
                _ => {
                    return Err(CpuError::TooManyVcpus {
                        max_sockets: u32::try_from(m).unwrap_or(u32::MAX),
                        per_socket,
                    })
                }
            }
        }
    };
    let cpu = CpuSpec {
        sockets,
        max_sockets,
        cores,
        threads,
        model,
        features,
    };

    // Memory.
    let mem = domain.memory.clone().unwrap_or_default();
    let bytes = match &mem.guest {
        Some(q) => bytes_of(q, "spec.domain.memory.guest")?,
        None => return Err(CpuError::NoMemory),
    };
    if bytes < 16 << 20 {
        return Err(CpuError::TooLittleMemory);
    }
    let hugepages = match mem.hugepages.as_ref().and_then(|h| h.page_size.clone()) {
        None => None,
        Some(ps) => {
            let page_size = Quantity::parse(&ps)
                .map_err(|e| CpuError::HugepageSize {
                    page_size: ps.clone(),
                    reason: e.to_string(),
                })?
                .value() as u64;
            if !matches!(page_size, 0x20_0000 | 0x4000_0000) {
                return Err(CpuError::HugepageUnsupported { page_size: ps });
            }
            let mount = ctx.env.hugetlbfs.get(&page_size).cloned().ok_or_else(|| {
                CpuError::NoHugetlbfs {
                    page_size: ps.clone(),
                    mount: if page_size == 0x20_0000 {
                        "/dev/hugepages"
                    } else {
                        "/dev/hugepages1G"
                    },
                    option: if page_size == 0x20_0000 { "2M" } else { "1G" },
                }
            })?;
            if bytes % page_size != 0 {
                return Err(CpuError::NotHugepageMultiple {
                    bytes,
                    page_size: ps,
                });
            }
            // Namespace and name come from the API (validated there); whatever they hold,
            // the launcher creates this directory only beneath `mount` (paths::dir_beneath).
            let dir = mount.join("kubevirt-rs").join(ctx.namespace).join(ctx.name);
            Some(Hugepages {
                page_size,
                mount,
                dir,
            })
        }
    };
    let hotplug = match &mem.max_guest {
        // virtio-mem is PCI only (QEMU 7.2 has no virtio-mem-ccw).
        Some(q) if ctx.profile == Profile::Q35 && hugepages.is_none() => {
            memory_hotplug(bytes, bytes_of(q, "spec.domain.memory.maxGuest")?)?
        }
        Some(_) => {
            tracing::info!(
                vmi = %ctx.name,
                "spec.domain.memory.maxGuest ignored: no memory hotplug on microvm, arm64, s390x or hugepages"
            );
            None
        }
        None => None,
    };
    let memory = MemorySpec {
        bytes,
        hugepages,
        hotplug,
    };
    Ok((cpu, memory))
}

/// KubeVirt's memory hotplug block (`HotplugBlockAlignmentBytes`, 2 MiB).
pub const HOTPLUG_BLOCK: u64 = 2 << 20;
/// KubeVirt's `requiredMinGuestMemory`: memory hotplug needs at least 1 GiB at boot.
pub const HOTPLUG_MIN_GUEST: u64 = 1 << 30;

/// The virtio-mem device for `maxGuest`, KubeVirt's rules (`ValidateLiveUpdateMemory`) with
/// its messages; `None` when `maxGuest` leaves nothing to plug.
fn memory_hotplug(guest: u64, max_guest: u64) -> Result<Option<MemoryHotplug>, CpuError> {
    let err = |reason: &str| CpuError::MaxGuest {
        reason: reason.into(),
    };
    if max_guest < guest {
        return Err(err(
            "Guest memory is greater than the configured maxGuest memory",
        ));
    }
    if max_guest == guest {
        return Ok(None);
    }
    if !guest.is_multiple_of(HOTPLUG_BLOCK) {
        return Err(err("Guest memory must be 2Mi aligned"));
    }
    if !max_guest.is_multiple_of(HOTPLUG_BLOCK) {
        return Err(err("MaxGuest must be 2Mi aligned"));
    }
    if guest < HOTPLUG_MIN_GUEST {
        return Err(err(
            "Memory hotplug is only available for VMs with at least 1Gi of guest memory",
        ));
    }
    Ok(Some(MemoryHotplug {
        max_bytes: max_guest,
        block_size: HOTPLUG_BLOCK,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{convert, parse_vmi, SpecError};
    use super::*;

    /// The CPU/memory error of `spec` (indented by two), checking that it names its field.
    fn cpu_err(spec: &str) -> CpuError {
        match convert(spec) {
            Err(SpecError::Cpu(e)) => {
                assert!(
                    e.to_string().starts_with(&format!("{}: ", e.field())),
                    "{e}"
                );
                e
            }
            other => panic!("not a CPU error: {other:?}"),
        }
    }

    #[test]
    fn unknown_and_hostile_cpu_names_are_refused_with_their_field() {
        let e = cpu_err("  domain:\n    memory: {guest: 64Mi}\n    cpu: {model: \"max,+vmx\"}\n");
        assert!(matches!(e, CpuError::ModelName { ref model } if model == "max,+vmx"));
        assert_eq!(
            e.to_string(),
            r#"spec.domain.cpu.model: "max,+vmx" is not a CPU model name ([A-Za-z0-9_.-]+)"#
        );
        for bad in ["../x", "a/b", "a=b", "a\\u0000b"] {
            let e = cpu_err(&format!(
                "  domain:\n    memory: {{guest: 64Mi}}\n    cpu: {{model: \"{bad}\"}}\n"
            ));
            assert!(matches!(e, CpuError::ModelName { .. }), "{bad}: {e}");
        }
        let e = cpu_err(
            "  domain:\n    memory: {guest: 64Mi}\n    cpu: {model: max, features: [{name: pcid}, {name: \"a=b\\u0000\"}]}\n",
        );
        assert!(matches!(e, CpuError::FeatureName { .. }));
        assert_eq!(
            e.to_string(),
            r#"spec.domain.cpu.features[1].name: "a=b\0" is not a CPU feature name ([A-Za-z0-9_.-]+)"#
        );
        // A named model QEMU does not list, when the list is known.
        let yaml = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: t}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    cpu: {model: Nehalem}\n";
        let mut env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        env.qemu_cpu_models = Some(parse_cpu_models("x86 Skylake-Client  Intel\n"));
        let e = MachineSpec::from_vmi(&parse_vmi(yaml).unwrap(), &env).unwrap_err();
        assert_eq!(
            e,
            SpecError::Cpu(CpuError::UnknownModel {
                model: "Nehalem".into()
            })
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.cpu.model: CPU model Nehalem is not known to QEMU"
        );
    }

    #[test]
    fn topology_and_memory_errors_say_what_is_wrong() {
        let e = cpu_err("  domain:\n    memory: {guest: 64Mi}\n    cpu: {cores: 513}\n");
        assert_eq!(
            e,
            CpuError::Topology {
                field: "spec.domain.cpu.cores",
                count: 513
            }
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.cpu.cores: 513 must be between 1 and 512"
        );
        let e = cpu_err("  domain:\n    memory: {guest: 8Mi}\n");
        assert_eq!(e, CpuError::TooLittleMemory);
        assert_eq!(
            e.to_string(),
            "spec.domain.memory.guest: at least 16Mi of guest memory is needed"
        );
        let e = cpu_err("  domain:\n    memory: {guest: 64Mi, hugepages: {pageSize: 4Ki}}\n");
        assert!(matches!(e, CpuError::HugepageUnsupported { .. }));
        assert_eq!(
            e.to_string(),
            "spec.domain.memory.hugepages.pageSize: 4Ki: only 2Mi and 1Gi pages exist on x86_64"
        );
        let e = cpu_err("  domain:\n    memory: {guest: 65Mi, hugepages: {pageSize: 2Mi}}\n");
        assert!(matches!(e, CpuError::NotHugepageMultiple { .. }));
        assert_eq!(
            e.to_string(),
            "spec.domain.memory.guest: guest memory (68157440 bytes) is not a multiple of the hugepage size 2Mi"
        );
    }

    /// A VMI name that is not a Kubernetes name (only possible outside the API, e.g.
    /// `launcher run -f`) cannot place the hugepages directory outside the mount: the launcher
    /// creates it with `paths::dir_beneath`, which refuses `..` and creates nothing.
    #[test]
    fn a_hostile_vmi_name_cannot_move_the_hugepages_directory_out_of_the_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("hugepages");
        std::fs::create_dir(&mount).unwrap();
        let mut env = super::super::Environment::fixed(
            std::path::Path::new("/d"),
            crate::accel::Accelerator::Tcg,
        );
        env.hugetlbfs.insert(2 << 20, mount.clone());
        for (ns, name) in [("ns", "../../../escaped"), ("..", "x"), ("ns", "a/../../b")] {
            let vmi = parse_vmi(&format!(
                "metadata: {{name: {name:?}, namespace: {ns:?}}}\n\
                 spec: {{domain: {{devices: {{}}, memory: {{guest: 64Mi, hugepages: {{pageSize: 2Mi}}}}}}}}\n"
            ))
            .unwrap();
            let h = MachineSpec::from_vmi(&vmi, &env)
                .unwrap()
                .memory
                .hugepages
                .unwrap();
            assert!(
                crate::paths::dir_beneath(&h.mount, &h.dir, true).is_err(),
                "{}",
                h.dir.display()
            );
        }
        assert!(!tmp.path().join("escaped").exists());
        assert!(!tmp.path().join("b").exists());
        assert_eq!(
            std::fs::read_dir(&mount).unwrap().count(),
            0,
            "nothing created"
        );
    }

    /// QEMU's `mem-path` is the VMI's own directory in the mount of its page size; a node
    /// without such a mount refuses the VMI and says how to make one.
    #[test]
    fn hugepages_use_a_per_vmi_directory_in_the_mount_of_their_size() {
        let m =
            convert("  domain:\n    memory: {guest: 2Gi, hugepages: {pageSize: 1Gi}}\n").unwrap();
        let h = m.memory.hugepages.unwrap();
        assert_eq!(h.page_size, 1 << 30);
        assert_eq!(h.mount, std::path::Path::new("/dev/hugepages1G"));
        assert_eq!(
            h.dir,
            std::path::Path::new("/dev/hugepages1G/kubevirt-rs/ns/t")
        );

        let vmi = parse_vmi(
            "metadata: {name: t, namespace: ns}\n\
             spec: {domain: {devices: {}, memory: {guest: 64Mi, hugepages: {pageSize: 2Mi}}}}\n",
        )
        .unwrap();
        let mut env = super::super::Environment::fixed(
            std::path::Path::new("/d"),
            crate::accel::Accelerator::Tcg,
        );
        env.hugetlbfs.clear();
        let e = match MachineSpec::from_vmi(&vmi, &env) {
            Err(SpecError::Cpu(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            e.to_string(),
            "spec.domain.memory.hugepages.pageSize: 2Mi: no hugetlbfs of this page size is \
             mounted on this node (as root: mount -t hugetlbfs -o pagesize=2M none \
             /dev/hugepages, and reserve pages in /sys/kernel/mm/hugepages)"
        );
    }

    #[test]
    fn microvm_under_tcg_needs_max() {
        let e = cpu_err("  domain:\n    machine: {type: microvm}\n    memory: {guest: 64Mi}\n    cpu: {model: Skylake-Client}\n");
        assert!(matches!(e, CpuError::MicrovmNeedsMax { .. }));
        assert_eq!(e.field(), "spec.domain.cpu.model");
    }

    #[test]
    fn feature_policies_and_hugepage_sizes_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    cpu: {features: [{name: pcid, policy: maybe}]}\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.cpu.features[0].policy");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    cpu: {sockets: 2, features: [{name: pcid}, {name: vmx, policy: disable}]}\n").unwrap();
        assert_eq!(s.cpu.features, ["+pcid", "-vmx"]);
        assert_eq!(s.cpu.vcpus(), 2);
        let e = convert("  domain:\n    memory: {guest: 65Mi, hugepages: {pageSize: 2Mi}}\n")
            .unwrap_err();
        assert_eq!(e.field(), "spec.domain.memory.guest");
        let e = convert("  domain:\n    memory: {guest: 8Mi}\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.memory.guest");
    }

    #[test]
    fn hotplug_room_becomes_maxcpus_and_a_virtio_mem_device() {
        let s = convert(
            "  domain:\n    memory: {guest: 1Gi, maxGuest: 4Gi}\n    cpu: {sockets: 1, cores: 2, maxSockets: 4}\n",
        )
        .unwrap();
        assert_eq!((s.cpu.vcpus(), s.cpu.max_vcpus()), (2, 8));
        assert_eq!(
            s.memory.hotplug,
            Some(MemoryHotplug {
                max_bytes: 4 << 30,
                block_size: 2 << 20
            })
        );
        let argv = crate::qemu::render(&s).unwrap().join(" ");
        assert!(
            argv.contains("-smp 2,sockets=4,cores=2,threads=1,maxcpus=8"),
            "{argv}"
        );
        assert!(argv.contains("-m 1024M,maxmem=4096M"), "{argv}");
        assert!(
            argv.contains("-object memory-backend-ram,id=mem-virtio-mem0,size=3221225472"),
            "{argv}"
        );
        assert!(argv.ends_with("-device virtio-mem-pci,id=virtio-mem0,memdev=mem-virtio-mem0,block-size=2097152,requested-size=0"), "{argv}");

        // microvm has no hotplug: the boot topology only, maxGuest ignored.
        let m = convert(
            "  domain:\n    machine: {type: microvm}\n    firmware: {kernelBoot: {container: {image: x, kernelPath: /k}}}\n    memory: {guest: 1Gi, maxGuest: 4Gi}\n    cpu: {model: max, sockets: 1, maxSockets: 4}\n",
        )
        .unwrap();
        assert_eq!(m.cpu.max_sockets, 1);
        assert_eq!(m.memory.hotplug, None);
    }

    /// Numbers a hostile user can put in maxSockets/maxGuest: refused with the field, never a
    /// QEMU argument that overflows or wraps.
    #[test]
    fn hostile_hotplug_limits_are_refused_with_their_field() {
        let e =
            cpu_err("  domain:\n    memory: {guest: 64Mi}\n    cpu: {sockets: 2, maxSockets: 1}\n");
        assert_eq!(
            e.to_string(),
            "spec.domain.cpu.maxSockets: 1 is less than spec.domain.cpu.sockets (2): raise maxSockets or leave it unset"
        );
        for huge in ["513", "4294967297", "9223372036854775807"] {
            let e = cpu_err(&format!(
                "  domain:\n    memory: {{guest: 64Mi}}\n    cpu: {{maxSockets: {huge}}}\n"
            ));
            assert!(matches!(e, CpuError::TooManyVcpus { .. }), "{huge}: {e}");
            assert_eq!(e.field(), "spec.domain.cpu.maxSockets");
        }
        for (mem, msg) in [
            (
                "{guest: 2Gi, maxGuest: 1Gi}",
                "Guest memory is greater than the configured maxGuest memory",
            ),
            (
                "{guest: 1Gi, maxGuest: 3000000001}",
                "MaxGuest must be 2Mi aligned",
            ),
            (
                "{guest: 512Mi, maxGuest: 2Gi}",
                "Memory hotplug is only available for VMs with at least 1Gi of guest memory",
            ),
        ] {
            let e = cpu_err(&format!("  domain:\n    memory: {mem}\n"));
            assert_eq!(e.to_string(), format!("spec.domain.memory.maxGuest: {msg}"));
        }
        // maxGuest equal to guest: nothing to plug, no device.
        let s = convert("  domain:\n    memory: {guest: 1Gi, maxGuest: 1Gi}\n").unwrap();
        assert_eq!(s.memory.hotplug, None);
    }
}
