//! The QEMU backend: `MachineSpec` → `qemu-system-x86_64` argv, for the q35 and microvm profiles.
//!
//! Every machine starts paused (`-S`) with no default devices and a QMP socket; the launcher
//! continues it over QMP once it is attached. `-no-shutdown` keeps QEMU alive after the guest
//! powers off, so the launcher sees the SHUTDOWN event, can turn it into a reboot (soft reboot)
//! and quits QEMU itself.

use crate::machine::{
    Bus, DiskDevice, DiskSpec, Firmware, MachineSpec, NetBackend, NicModel, Profile, WatchdogAction,
};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// QEMU's option parser splits on `,`; a literal comma is written `,,`.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn p(path: &std::path::Path) -> String {
    esc(&path.to_string_lossy())
}

pub fn render(spec: &MachineSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut arg = |s: &str, v: String| {
        a.push(s.to_string());
        a.push(v);
    };
    let microvm = spec.profile == Profile::Microvm;
    let name = spec.vmi.replace('/', "_");
    arg("-name", format!("guest={},debug-threads=on", esc(&name)));

    // Machine.
    let mut machine = match spec.profile {
        Profile::Q35 => "q35".to_string(),
        // The ISA devices are what the kernel needs to boot and print under TCG (docs/ENVIRONMENT.md);
        // acpi=on is how the kernel finds the virtio-mmio devices and the power button (GED).
        Profile::Microvm => "microvm,rtc=on,pit=on,pic=on,isa-serial=on".to_string(),
    };
    if microvm {
        machine.push_str(if spec.acpi { ",acpi=on" } else { ",acpi=off" });
    } else if !spec.acpi {
        machine.push_str(",acpi=off");
    }
    if let Firmware::Efi {
        secure_boot: true, ..
    } = spec.firmware
    {
        machine.push_str(",smm=on");
    }
    if spec.memory.hugepages.is_some() {
        machine.push_str(",memory-backend=mem0");
    }
    arg("-machine", machine);
    arg("-accel", spec.accelerator.as_str().to_string());
    let mut cpu = spec.cpu.model.clone();
    for f in &spec.cpu.features {
        cpu.push(',');
        cpu.push_str(f);
    }
    arg("-cpu", cpu);
    arg(
        "-smp",
        format!(
            "{},sockets={},cores={},threads={}",
            spec.cpu.vcpus(),
            spec.cpu.sockets,
            spec.cpu.cores,
            spec.cpu.threads
        ),
    );
    let mib = spec.memory.bytes.div_ceil(1 << 20);
    arg("-m", format!("{mib}M"));
    if let Some(h) = &spec.memory.hugepages {
        arg(
            "-object",
            format!(
                "memory-backend-file,id=mem0,size={mib}M,mem-path={},share=on,prealloc=on",
                p(&h.mount)
            ),
        );
    }
    if let Some(u) = &spec.uuid {
        arg("-uuid", u.clone());
    }
    if let Some(s) = &spec.smbios_serial {
        arg("-smbios", format!("type=1,serial={}", esc(s)));
    }
    a.extend(
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-no-shutdown",
            "-msg",
            "timestamp=on",
        ]
        .map(String::from),
    );
    let mut arg = |s: &str, v: String| {
        a.push(s.to_string());
        a.push(v);
    };
    arg(
        "-qmp",
        format!("unix:{},server=on,wait=off", p(&spec.qmp_socket())),
    );

    // Firmware and boot.
    match &spec.firmware {
        Firmware::Bios => {}
        Firmware::Efi {
            code,
            vars,
            secure_boot,
            ..
        } => {
            arg(
                "-drive",
                format!("if=pflash,format=raw,unit=0,file={},readonly=on", p(code)),
            );
            arg(
                "-drive",
                format!("if=pflash,format=raw,unit=1,file={}", p(vars)),
            );
            if *secure_boot {
                arg(
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                );
            }
        }
        Firmware::Kernel(k) => {
            arg("-kernel", p(&k.kernel));
            if let Some(i) = &k.initrd {
                arg("-initrd", p(i));
            }
            if !k.cmdline.is_empty() {
                arg("-append", k.cmdline.clone());
            }
        }
    }

    // Serial console and graphics.
    if spec.serial_console {
        arg(
            "-chardev",
            format!(
                "socket,id=serial0,path={},server=on,wait=off",
                p(&spec.serial_socket())
            ),
        );
        arg("-serial", "chardev:serial0".into());
    }
    if spec.vnc {
        arg("-device", "VGA,id=video0".into());
        arg("-vnc", format!("unix:{}", p(&spec.vnc_socket())));
    }
    if spec.tablet {
        arg("-device", "qemu-xhci,id=usb0".into());
        arg("-device", "usb-tablet,id=input0,bus=usb0.0".into());
    }

    // Disks.
    let virtio_suffix = if microvm { "device" } else { "pci" };
    let mut sata_port = 0;
    if spec.disks.iter().any(|d| d.bus == Bus::Scsi) {
        arg("-device", "virtio-scsi-pci,id=scsi0".into());
    }
    for d in &spec.disks {
        let drive_id = format!("drive-{}", d.name);
        arg("-drive", drive(d, &drive_id));
        let mut dev = match (d.bus, d.device) {
            (Bus::Virtio, _) => format!("virtio-blk-{virtio_suffix},drive={drive_id}"),
            (Bus::Sata, DiskDevice::Cdrom) => {
                sata_port += 1;
                format!("ide-cd,drive={drive_id},bus=ide.{}", sata_port - 1)
            }
            (Bus::Sata, _) => {
                sata_port += 1;
                format!("ide-hd,drive={drive_id},bus=ide.{}", sata_port - 1)
            }
            (Bus::Scsi, DiskDevice::Cdrom) => format!("scsi-cd,drive={drive_id},bus=scsi0.0"),
            (Bus::Scsi, _) => format!("scsi-hd,drive={drive_id},bus=scsi0.0"),
        };
        dev.push_str(&format!(",id=ua-{}", d.name));
        if let Some(b) = d.boot_order {
            dev.push_str(&format!(",bootindex={b}"));
        }
        if let Some(s) = &d.serial {
            dev.push_str(&format!(",serial={}", esc(s)));
        }
        arg("-device", dev);
    }

    // Network.
    for (i, n) in spec.nics.iter().enumerate() {
        let id = format!("net{i}");
        match &n.backend {
            NetBackend::Masquerade {
                network,
                gateway,
                guest,
                forwards,
            } => {
                let mut nd = format!("user,id={id},net={network},host={gateway},dhcpstart={guest}");
                for f in forwards {
                    nd.push_str(&format!(
                        ",hostfwd={}:{}:{}-:{}",
                        f.protocol, f.host_address, f.host_port, f.guest_port
                    ));
                }
                arg("-netdev", nd);
            }
            NetBackend::Bridge { tap, .. } => {
                arg(
                    "-netdev",
                    format!("tap,id={id},ifname={tap},script=no,downscript=no"),
                );
            }
        }
        let model = match n.model {
            NicModel::Virtio => format!("virtio-net-{virtio_suffix}"),
            NicModel::E1000 => "e1000".into(),
            NicModel::E1000e => "e1000e".into(),
            NicModel::Rtl8139 => "rtl8139".into(),
        };
        let mut dev = format!("{model},netdev={id},id=ua-{}", n.name);
        if let Some(mac) = &n.mac {
            dev.push_str(&format!(",mac={mac}"));
        }
        if let Some(b) = n.boot_order {
            dev.push_str(&format!(",bootindex={b}"));
        } else if !microvm {
            // No PXE ROM probing for NICs that are not boot devices (libvirt's rom bar=off).
            dev.push_str(",romfile=");
        }
        arg("-device", dev);
    }

    // Other devices.
    if spec.rng {
        arg("-object", "rng-random,id=rng0,filename=/dev/urandom".into());
        arg(
            "-device",
            format!("virtio-rng-{virtio_suffix},rng=rng0,id=rng"),
        );
    }
    if spec.balloon.is_some() {
        arg(
            "-device",
            format!("virtio-balloon-{virtio_suffix},id=balloon0"),
        );
    }
    if let Some(w) = spec.watchdog {
        arg("-device", "i6300esb,id=watchdog0".into());
        // KubeVirt's "shutdown" is a graceful ACPI shutdown, "poweroff" the immediate one.
        let action = match w {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Shutdown => "shutdown",
        };
        arg("-watchdog-action", action.into());
    }
    a
}

fn drive(d: &DiskSpec, id: &str) -> String {
    let mut s = format!(
        "if=none,id={id},file={},format={}",
        p(&d.path),
        d.format.as_str()
    );
    if d.device == DiskDevice::Cdrom {
        s.push_str(",media=cdrom");
    }
    if d.readonly {
        s.push_str(",readonly=on");
    }
    if let Some(c) = &d.cache {
        s.push_str(&format!(",cache={c}"));
    }
    if let Some(io) = &d.io {
        s.push_str(&format!(",aio={io}"));
    }
    s
}
