//! Machine type, accelerator, CPU, topology, memory and identity (`-name`, `-uuid`, `-smbios`).

use super::opts::{self, Opts, OptsError};
use crate::machine::{Firmware, MachineSpec, Profile};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("-name: {0}")]
    Name(#[source] OptsError),
    #[error("-machine: {0}")]
    Machine(#[source] OptsError),
    #[error("-cpu: {0}")]
    Cpu(#[source] OptsError),
    #[error("-object memory-backend / virtio-mem: {0}")]
    Memory(#[source] OptsError),
    #[error("-uuid: {0:?} is not a UUID")]
    Uuid(String),
    #[error("-smbios: {0}")]
    Smbios(#[source] OptsError),
}

/// `-name` … `-smbios`, in the order QEMU's users expect to read them.
pub fn render(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), CpuError> {
    let microvm = spec.profile == Profile::Microvm;
    let name = spec.vmi.replace('/', "_");
    push(
        a,
        "-name",
        Opts::keyed()
            .set("guest", &name)
            .set("debug-threads", "on")
            .build()
            .map_err(CpuError::Name)?,
    );

    let mut machine = match spec.profile {
        Profile::Q35 => Opts::new("q35"),
        // The ISA devices are what the kernel needs to boot and print under TCG
        // (docs/ENVIRONMENT.md); acpi=on is how the kernel finds the virtio-mmio devices and the
        // power button (GED).
        Profile::Microvm => Opts::new("microvm")
            .set("rtc", "on")
            .set("pit", "on")
            .set("pic", "on")
            .set("isa-serial", "on"),
        // GICv3: more than 8 vCPUs, under TCG and on today's arm64 hosts alike.
        Profile::Virt => Opts::new("virt").set("gic-version", "3"),
        // The channel subsystem; the console is SCLP (`-serial`), no ACPI property exists.
        Profile::S390Ccw => Opts::new("s390-ccw-virtio"),
    };
    if microvm {
        machine = machine.set("acpi", if spec.acpi { "on" } else { "off" });
    } else if !spec.acpi && spec.profile != Profile::S390Ccw {
        machine = machine.set("acpi", "off");
    }
    let secure_boot = matches!(
        spec.firmware,
        Firmware::Efi {
            secure_boot: true,
            ..
        }
    );
    let machine = machine
        .set_if(secure_boot && spec.profile == Profile::Q35, "smm", "on")
        .set_if(spec.memory.hugepages.is_some(), "memory-backend", "mem0")
        .build()
        .map_err(CpuError::Machine)?;
    push(a, "-machine", machine);
    push(a, "-accel", spec.accelerator.as_str().to_string());

    let mut features = Vec::with_capacity(spec.cpu.features.len());
    for f in &spec.cpu.features {
        // CpuSpec keeps `+name` / `-name`; a feature without a sign is refused by opts::cpu.
        let mut c = f.chars();
        let sign = c.next().unwrap_or(' ');
        features.push((sign, c.as_str()));
    }
    let mut cpu = opts::cpu(&spec.cpu.model, &features).map_err(CpuError::Cpu)?;
    if spec.profile == Profile::Virt
        && spec.accelerator == crate::accel::Accelerator::Tcg
        && spec.cpu.model == "max"
    {
        // TCG's own pointer-authentication hash instead of emulating QARMA: the same guest
        // ABI, and a Debian kernel reaches /init in half the time (docs/architectures.md).
        cpu.push_str(",pauth-impdef=on");
    }
    push(a, "-cpu", cpu);
    // With room for hotplug, QEMU's topology is the largest one (as libvirt's `<vcpu
    // current=N>`): the sockets beyond the boot count are plugged with `device_add`.
    let smp = if spec.cpu.max_sockets > spec.cpu.sockets {
        format!(
            "{},sockets={},cores={},threads={},maxcpus={}",
            spec.cpu.vcpus(),
            spec.cpu.max_sockets,
            spec.cpu.cores,
            spec.cpu.threads,
            spec.cpu.max_vcpus()
        )
    } else {
        format!(
            "{},sockets={},cores={},threads={}",
            spec.cpu.vcpus(),
            spec.cpu.sockets,
            spec.cpu.cores,
            spec.cpu.threads
        )
    };
    push(a, "-smp", smp);
    let mib = spec.memory.bytes.div_ceil(1 << 20);
    match &spec.memory.hotplug {
        Some(h) => push(
            a,
            "-m",
            format!("{mib}M,maxmem={}M", h.max_bytes.div_ceil(1 << 20)),
        ),
        None => push(a, "-m", format!("{mib}M")),
    }
    if let Some(h) = &spec.memory.hugepages {
        push(
            a,
            "-object",
            Opts::new("memory-backend-file")
                .set("id", "mem0")
                .set("size", format!("{mib}M"))
                .set_path("mem-path", &h.dir)
                .set("share", "on")
                .set("prealloc", "on")
                .build()
                .map_err(CpuError::Memory)?,
        );
    }
    if let Some(u) = &spec.uuid {
        // `-uuid` is not an option string, but only a UUID may reach it.
        uuid::Uuid::parse_str(u).map_err(|_| CpuError::Uuid(u.clone()))?;
        push(a, "-uuid", u.clone());
    }
    // s390x has no SMBIOS (qemu-system-s390x refuses -smbios; KubeVirt's IsSMBiosNeeded).
    if let Some(s) = spec
        .smbios_serial
        .as_ref()
        .filter(|_| spec.profile != Profile::S390Ccw)
    {
        push(
            a,
            "-smbios",
            Opts::keyed()
                .set("type", "1")
                .set("serial", s)
                .build()
                .map_err(CpuError::Smbios)?,
        );
    }
    Ok(())
}

/// The virtio-mem device (and its RAM backend) that memory hotplug grows into: rendered after
/// every other device, so the PCI slots of the others do not move. Its `requested-size` starts
/// at 0; the launcher raises it over QMP (`qom-set`).
pub fn render_memory_hotplug(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), CpuError> {
    let Some(h) = &spec.memory.hotplug else {
        return Ok(());
    };
    let size = h.max_bytes.saturating_sub(spec.memory.bytes);
    let backend = format!("mem-{}", crate::machine::VIRTIO_MEM_ID);
    push(
        a,
        "-object",
        Opts::new("memory-backend-ram")
            .set("id", &backend)
            .set("size", size.to_string())
            .build()
            .map_err(CpuError::Memory)?,
    );
    push(
        a,
        "-device",
        Opts::new("virtio-mem-pci")
            .set("id", crate::machine::VIRTIO_MEM_ID)
            .set("memdev", &backend)
            .set("block-size", h.block_size.to_string())
            .set("requested-size", "0")
            .build()
            .map_err(CpuError::Memory)?,
    );
    Ok(())
}

pub(super) fn push(a: &mut Vec<String>, flag: &str, value: String) {
    a.push(flag.to_string());
    a.push(value);
}

#[cfg(test)]
mod tests {
    use super::super::test_spec;
    use super::*;

    #[test]
    fn a_feature_with_a_comma_is_refused() {
        let mut s = test_spec();
        s.cpu.features = vec!["+pcid,romfile=/etc/shadow".into()];
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(matches!(e, CpuError::Cpu(_)), "{e}");
    }

    #[test]
    fn a_model_with_a_comma_is_refused() {
        let mut s = test_spec();
        s.cpu.model = "max,+vmx".into();
        assert!(matches!(
            render(&s, &mut vec![]).unwrap_err(),
            CpuError::Cpu(_)
        ));
    }

    #[test]
    fn smbios_serial_and_name_are_escaped_and_uuid_checked() {
        let mut s = test_spec();
        s.smbios_serial = Some("a,b".into());
        s.vmi = "ns/x,y".into();
        let mut a = vec![];
        render(&s, &mut a).unwrap();
        assert!(a.contains(&"type=1,serial=a,,b".to_string()), "{a:?}");
        assert!(a.contains(&"guest=ns_x,,y,debug-threads=on".to_string()));
        s.uuid = Some("not-a-uuid,x".into());
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(matches!(e, CpuError::Uuid(_)));
        assert_eq!(e.to_string(), r#"-uuid: "not-a-uuid,x" is not a UUID"#);
        s.uuid = None;
        s.smbios_serial = Some("a\0b".into());
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(e, CpuError::Smbios(OptsError::BadValue { .. })),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            r#"-smbios: serial="a\0b": NUL and line breaks cannot be passed to QEMU"#
        );
    }
}
