//! Golden tests of the QEMU renderer: each `golden/NAME.yaml` VMI renders to `golden/NAME.args`
//! (one argument per line, then `# key: value` lines for what is not an argument).
//! `UPDATE_GOLDEN=1 cargo test -p kubevirt-launcher --test golden` rewrites the expected files.

use kubevirt_launcher::accel::Accelerator;
use kubevirt_launcher::machine::{parse_vmi, Environment, HostPorts, MachineSpec};
use kubevirt_launcher::qemu;
use std::path::{Path, PathBuf};

fn env() -> Environment {
    let mut env = Environment::fixed(Path::new("/run/kubevirt-rs/vmi"), Accelerator::Tcg);
    env.host_ports = HostPorts::Base(20000);
    env.pvc_paths.insert(
        "root-pvc".into(),
        "/var/lib/kubevirt-rs/pvc/root-pvc/disk.img".into(),
    );
    env.data_volume_paths.insert(
        "root-dv".into(),
        "/var/lib/kubevirt-rs/pvc/root-dv/disk.img".into(),
    );
    env.bridges
        .insert("storage-net".into(), "br-storage".into());
    env
}

fn render(yaml: &Path) -> String {
    let text = std::fs::read_to_string(yaml).unwrap();
    let vmi = parse_vmi(&text).unwrap();
    let mut env = env();
    if yaml
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("sriov"))
    {
        // As virt-handler hands it over: the pod network on eth0 and the SR-IOV network's
        // virtual function (no hardware here: only the argv can be checked).
        use kubevirt_launcher::api::{PodAddress, PodInterface, PodNetworkInfo, SriovDevice};
        env.pod_network = Some(PodNetworkInfo {
            netns: "/run/netns/kvrs-golden".into(),
            interfaces: vec![PodInterface {
                network: "default".into(),
                interface: "eth0".into(),
                addresses: vec![PodAddress {
                    ip: "10.244.0.9".parse().unwrap(),
                    prefix: 24,
                }],
                gateway: "10.244.0.1".parse().ok(),
                mac: None,
            }],
            sriov: vec![SriovDevice {
                network: "sriov-net".into(),
                pci_address: "0000:81:10.2".into(),
            }],
        });
    }
    let spec =
        MachineSpec::from_vmi(&vmi, &env).unwrap_or_else(|e| panic!("{}: {e}", yaml.display()));
    let mut out = qemu::render(&spec)
        .unwrap_or_else(|e| panic!("{}: {e}", yaml.display()))
        .join("\n");
    out.push_str(&format!(
        "\n# startPaused: {}\n# terminationGracePeriodSeconds: {}\n",
        spec.start_paused, spec.termination_grace_period_seconds
    ));
    out
}

#[test]
fn every_golden_vmi_renders_to_its_argv() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut yamls: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    yamls.sort();
    assert!(yamls.len() >= 15);
    let mut failures = Vec::new();
    for y in &yamls {
        let got = render(y);
        let expected_path = y.with_extension("args");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            failures.push(format!(
                "{}: rendered argv differs (UPDATE_GOLDEN=1 to accept)\n--- expected\n{expected}\n--- got\n{got}",
                y.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn start_strategy_paused_keeps_the_machine_paused() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    assert!(render(&dir.join("start-paused.yaml")).contains("# startPaused: true"));
    assert!(render(&dir.join("sata-disk.yaml")).contains("# startPaused: false"));
}

#[test]
fn specs_the_backend_cannot_honour_name_the_field() {
    let cases = [
        (
            "machine: {type: microvm}\n    firmware: {kernelBoot: {container: {image: x, kernelPath: /k}}}\n    devices:\n      interfaces: [{name: default, masquerade: {}, model: e1000}]",
            "spec.domain.devices.interfaces[0].model: microvm supports only virtio",
        ),
        (
            "machine: {type: microvm}",
            "spec.domain.firmware.kernelBoot: microvm has no firmware to boot a disk: set firmware.kernelBoot",
        ),
        (
            "devices:\n      disks: [{name: d, disk: {bus: usb}}]",
            "spec.domain.devices.disks[0].disk.bus: bus usb is not supported by the QEMU backend: use virtio, sata or scsi",
        ),
        (
            "devices:\n      disks: [{name: d, disk: {readonly: true}}]",
            "spec.domain.devices.disks[0].disk.readonly: sata hard-disks do not support read-only (QEMU's ide-hd refuses a read-only node): use bus virtio",
        ),
        (
            "machine: {type: pc-i440fx-2.0}",
            "spec.domain.machine.type: machine type pc-i440fx-2.0 is not supported: use q35 or microvm",
        ),
    ];
    for (domain, want) in cases {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: x}}\nspec:\n  domain:\n    memory: {{guest: 64Mi}}\n    {domain}\n  networks: [{{name: default, pod: {{}}}}]\n{}",
            if domain.contains("disks") {
                "  volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]\n"
            } else {
                ""
            }
        );
        let vmi = parse_vmi(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let err = MachineSpec::from_vmi(&vmi, &env()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

/// `spec.architecture` picks the emulator: a value the launcher does not run is refused at
/// that field (even when admission was bypassed), and arm64's own limits name their field.
#[test]
fn architectures_the_launcher_cannot_run_or_arm64_cannot_do_name_the_field() {
    let cases = [
        (
            "architecture: ppc64le",
            "",
            "spec.architecture: unsupported architecture: \"ppc64le\": this launcher runs amd64, arm64 and s390x guests",
        ),
        (
            "architecture: \"arm64,accel=kvm\"",
            "",
            "spec.architecture: unsupported architecture: \"arm64,accel=kvm\": this launcher runs amd64, arm64 and s390x guests",
        ),
        (
            "architecture: \"s390x -machine pc\"",
            "",
            "spec.architecture: unsupported architecture: \"s390x -machine pc\": this launcher runs amd64, arm64 and s390x guests",
        ),
        (
            "architecture: arm64",
            "machine: {type: q35}",
            "spec.domain.machine.type: machine type q35 is not supported: use virt (arm64)",
        ),
        (
            "architecture: amd64",
            "machine: {type: virt}",
            "spec.domain.machine.type: machine type virt is not supported: use q35 or microvm",
        ),
        (
            "architecture: arm64",
            "firmware: {bootloader: {bios: {}}}",
            "spec.domain.firmware.bootloader.bios: Arm64 does not support bios boot, please change to uefi boot",
        ),
        (
            "architecture: arm64",
            "devices:\n      disks: [{name: d, disk: {bus: sata}}]",
            "spec.domain.devices.disks[0].disk.bus: Arm64 not support this disk bus type, please use virtio or scsi",
        ),
        (
            "architecture: arm64",
            "cpu: {model: cortex-a72}",
            "spec.domain.cpu.model: currently, host-passthrough is the only model supported on Arm64, not \"cortex-a72\"",
        ),
        (
            "architecture: arm64",
            "devices:\n      watchdog: {name: w, i6300esb: {}}",
            "spec.domain.devices.watchdog: Arm64 not support Watchdog device",
        ),
    ];
    for (arch, domain, want) in cases {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: x}}\nspec:\n  {arch}\n  domain:\n    memory: {{guest: 64Mi}}\n    {domain}\n  networks: [{{name: default, pod: {{}}}}]\n{}",
            if domain.contains("disks") {
                "  volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]\n"
            } else {
                ""
            }
        );
        let vmi = parse_vmi(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let err = MachineSpec::from_vmi(&vmi, &env()).unwrap_err();
        assert_eq!(err.to_string(), want, "{yaml}");
    }
}

/// What cannot exist on s390x's `s390-ccw-virtio` (no PCI, USB, SATA, UEFI, i6300esb) is
/// refused at its field before anything reaches `qemu-system-s390x`.
#[test]
fn devices_that_cannot_exist_on_s390x_are_refused_naming_the_field() {
    let cases = [
        (
            "machine: {type: q35}",
            "spec.domain.machine.type: machine type q35 is not supported: use s390-ccw-virtio (s390x)",
        ),
        (
            "machine: {type: \"s390-ccw-virtio,accel=kvm\"}",
            "spec.domain.machine.type: machine type s390-ccw-virtio,accel=kvm is not supported: use s390-ccw-virtio (s390x)",
        ),
        (
            "firmware: {bootloader: {efi: {secureBoot: false}}}",
            "spec.domain.firmware.bootloader.efi: s390x has no UEFI (QEMU's s390-ccw firmware boots it): remove bootloader.efi",
        ),
        (
            "devices:\n      disks: [{name: d, disk: {bus: sata}}]",
            "spec.domain.devices.disks[0].disk.bus: s390x has no SATA: use virtio or scsi",
        ),
        (
            "devices:\n      interfaces: [{name: default, masquerade: {}, model: e1000}]",
            "spec.domain.devices.interfaces[0].model: s390x has no PCI: only virtio (virtio-net-ccw) is supported",
        ),
        (
            "devices:\n      interfaces: [{name: default, sriov: {}}]",
            "spec.domain.devices.interfaces[0].sriov: s390x has no PCI for an SR-IOV virtual function (vfio-pci)",
        ),
        (
            "devices:\n      inputs: [{name: t, type: tablet, bus: usb}]",
            "spec.domain.devices.inputs[0]: s390x has no USB for a tablet",
        ),
        (
            "devices:\n      watchdog: {name: w, i6300esb: {}}",
            "spec.domain.devices.watchdog: s390x only supports Diag288 watchdog device",
        ),
        (
            "devices:\n      watchdog: {name: w, diag288: {action: \"reset,id=x\"}}",
            "spec.domain.devices.watchdog.diag288.action: reset,id=x: use reset, poweroff or shutdown",
        ),
    ];
    for (domain, want) in cases {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: x}}\nspec:\n  architecture: s390x\n  domain:\n    memory: {{guest: 64Mi}}\n    {domain}\n  networks: [{{name: default, pod: {{}}}}]\n{}",
            if domain.contains("disks") {
                "  volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]\n"
            } else {
                ""
            }
        );
        let vmi = parse_vmi(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let err = MachineSpec::from_vmi(&vmi, &env()).unwrap_err();
        assert_eq!(err.to_string(), want, "{yaml}");
    }
    // And an amd64 VMI cannot ask for the s390x machine.
    let vmi = parse_vmi("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    machine: {type: s390-ccw-virtio}\n").unwrap();
    assert_eq!(
        MachineSpec::from_vmi(&vmi, &env()).unwrap_err().to_string(),
        "spec.domain.machine.type: machine type s390-ccw-virtio is not supported: use q35 or microvm"
    );
}

/// An s390x guest runs `qemu-system-s390x` under TCG on any other host; its argv has no PCI
/// device, no ACPI or SMBIOS option (the machine has neither) and its watchdog is diag288.
#[test]
fn an_s390x_guest_is_emulated_by_qemu_system_s390x_with_ccw_devices_only() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let text = std::fs::read_to_string(dir.join("s390x.yaml")).unwrap();
    let vmi = parse_vmi(&text).unwrap();
    let mut env = env();
    env.accelerator = Accelerator::Kvm;
    let spec = MachineSpec::from_vmi(&vmi, &env).unwrap();
    assert_eq!(
        qemu::binary(spec.arch, qemu::QEMU_BINARY),
        "qemu-system-s390x"
    );
    let want = if std::env::consts::ARCH == "s390x" {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    };
    assert_eq!(spec.accelerator, want);
    let argv = qemu::render(&spec).unwrap();
    let devices: Vec<&String> = argv
        .iter()
        .zip(argv.iter().skip(1))
        .filter(|(k, _)| *k == "-device")
        .map(|(_, v)| v)
        .collect();
    assert!(!devices.is_empty());
    for d in &devices {
        assert!(
            !d.contains("-pci") && !d.starts_with("i6300esb") && !d.starts_with("VGA"),
            "{d} cannot exist on s390-ccw-virtio"
        );
    }
    for want in [
        "virtio-blk-ccw",
        "virtio-scsi-ccw",
        "virtio-net-ccw",
        "virtio-gpu-ccw",
        "diag288",
    ] {
        assert!(
            devices.iter().any(|d| d.starts_with(want)),
            "no {want} in {argv:?}"
        );
    }
    assert!(
        !argv.iter().any(|a| a == "-smbios" || a.contains("acpi=")),
        "{argv:?}"
    );
    assert!(!argv.iter().any(|a| a.contains("romfile")), "{argv:?}");
}

/// An arm64 guest runs `qemu-system-aarch64` under TCG on any other host, whatever KVM can do.
#[test]
fn an_arm64_guest_is_emulated_by_qemu_system_aarch64() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let text = std::fs::read_to_string(dir.join("arm64.yaml")).unwrap();
    let vmi = parse_vmi(&text).unwrap();
    let mut env = env();
    env.accelerator = Accelerator::Kvm;
    let spec = MachineSpec::from_vmi(&vmi, &env).unwrap();
    assert_eq!(
        qemu::binary(spec.arch, qemu::QEMU_BINARY),
        "qemu-system-aarch64"
    );
    let want = if std::env::consts::ARCH == "aarch64" {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    };
    assert_eq!(spec.accelerator, want);
}
