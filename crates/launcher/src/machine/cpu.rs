//! `spec.domain.cpu` and `spec.domain.memory` → [`CpuSpec`], [`MemorySpec`].

use super::*;

pub(super) fn cpu_and_memory(ctx: &Ctx) -> Result<(CpuSpec, MemorySpec), SpecError> {
    let domain = &ctx.vmi.spec.domain;
    let (env, microvm) = (ctx.env, ctx.microvm);
    // CPU.
    let cpu = domain.cpu.clone().unwrap_or_default();
    let requested_model = cpu.model.clone().unwrap_or_else(|| "host-model".into());
    let model = match (requested_model.as_str(), env.accelerator) {
        ("host-model" | "host-passthrough", Accelerator::Kvm) => "host".to_string(),
        // Under TCG there is no host CPU to copy: `max` enables everything TCG emulates.
        ("host-model" | "host-passthrough", Accelerator::Tcg) => "max".to_string(),
        (m, _) => {
            if !crate::qemu::opts::is_cpu_name(m) {
                return Err(SpecError::new(
                    "spec.domain.cpu.model",
                    format!("{m:?} is not a CPU model name ([A-Za-z0-9_.-]+)"),
                ));
            }
            if let Some(known) = &env.qemu_cpu_models {
                if !known.contains(m) && m != "max" {
                    return Err(SpecError::new(
                        "spec.domain.cpu.model",
                        format!("CPU model {m} is not known to QEMU"),
                    ));
                }
            }
            m.to_string()
        }
    };
    if microvm && env.accelerator == Accelerator::Tcg && model != "max" {
        return Err(SpecError::new(
            "spec.domain.cpu.model",
            format!("machine type microvm under emulation needs CPU model max (the kernel hangs calibrating the TSC otherwise), not {model}"),
        ));
    }
    let mut features = Vec::new();
    for (i, f) in cpu.features.iter().flatten().enumerate() {
        let sign = match f.policy.as_deref().unwrap_or("require") {
            "require" | "force" | "optional" => '+',
            "disable" | "forbid" => '-',
            p => {
                return Err(SpecError::new(
                    format!("spec.domain.cpu.features[{i}].policy"),
                    format!("unknown policy {p}"),
                ))
            }
        };
        if !crate::qemu::opts::is_cpu_name(&f.name) {
            return Err(SpecError::new(
                format!("spec.domain.cpu.features[{i}].name"),
                format!("{:?} is not a CPU feature name ([A-Za-z0-9_.-]+)", f.name),
            ));
        }
        features.push(format!("{sign}{}", f.name));
    }
    let cpu = CpuSpec {
        sockets: positive(cpu.sockets, "spec.domain.cpu.sockets")?,
        cores: positive(cpu.cores, "spec.domain.cpu.cores")?,
        threads: positive(cpu.threads, "spec.domain.cpu.threads")?,
        model,
        features,
    };

    // Memory.
    let mem = domain.memory.clone().unwrap_or_default();
    let bytes = match &mem.guest {
        Some(q) => bytes_of(q, "spec.domain.memory.guest")?,
        None => {
            return Err(SpecError::new(
                "spec.domain.memory.guest",
                "no memory requested: set spec.domain.memory.guest or spec.domain.resources.requests.memory",
            ))
        }
    };
    if bytes < 16 << 20 {
        return Err(SpecError::new(
            "spec.domain.memory.guest",
            "at least 16Mi of guest memory is needed",
        ));
    }
    let hugepages = match mem.hugepages.as_ref().and_then(|h| h.page_size.clone()) {
        None => None,
        Some(ps) => {
            let field = "spec.domain.memory.hugepages.pageSize";
            let page_size = Quantity::parse(&ps)
                .map_err(|e| SpecError::new(field, format!("{ps}: {e}")))?
                .value() as u64;
            let mount = match page_size {
                0x20_0000 => PathBuf::from("/dev/hugepages"),
                0x4000_0000 => PathBuf::from("/dev/hugepages1G"),
                _ => {
                    return Err(SpecError::new(
                        field,
                        format!("{ps}: only 2Mi and 1Gi pages exist on x86_64"),
                    ))
                }
            };
            if bytes % page_size != 0 {
                return Err(SpecError::new(
                    "spec.domain.memory.guest",
                    format!(
                        "guest memory ({bytes} bytes) is not a multiple of the hugepage size {ps}"
                    ),
                ));
            }
            Some(Hugepages { page_size, mount })
        }
    };
    let memory = MemorySpec { bytes, hugepages };
    Ok((cpu, memory))
}

#[cfg(test)]
mod tests {
    use super::super::convert;

    #[test]
    fn feature_policies_and_hugepage_sizes_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    cpu: {features: [{name: pcid, policy: maybe}]}\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.cpu.features[0].policy");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    cpu: {sockets: 2, features: [{name: pcid}, {name: vmx, policy: disable}]}\n").unwrap();
        assert_eq!(s.cpu.features, ["+pcid", "-vmx"]);
        assert_eq!(s.cpu.vcpus(), 2);
        let e = convert("  domain:\n    memory: {guest: 65Mi, hugepages: {pageSize: 2Mi}}\n")
            .unwrap_err();
        assert_eq!(e.field, "spec.domain.memory.guest");
        let e = convert("  domain:\n    memory: {guest: 8Mi}\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.memory.guest");
    }
}
