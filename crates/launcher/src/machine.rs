//! `MachineSpec`: what a VMI asks for, as a plain machine description that knows nothing of
//! QEMU. `MachineSpec::from_vmi` is the one place a `kubevirt.io/v1` VMI field becomes a machine
//! property; each backend (`qemu.rs`) renders a `MachineSpec` and nothing else.
//!
//! Backend limits (microvm: virtio only, no firmware, no cdrom, no PCI devices) are checked here,
//! so a spec the backend cannot honour fails before anything is created or started. Every error
//! names the VMI field path it comes from.
//!
//! `from_vmi` does no I/O beyond peeking at the first bytes of an already existing volume file
//! (to tell raw from qcow2); files are created by `volumes::prepare`.

use crate::accel::Accelerator;
use crate::cloudinit::CloudInitData;
pub use kubevirt_api::arch::Arch;
use kubevirt_api::defaults::{default_vmi, DefaultsConfig};
use kubevirt_api::quantity::Quantity;
use kubevirt_api::VirtualMachineInstance;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why `from_vmi` refused a VMI: the device family's own error, or a machine-wide field.
///
/// Every message starts with the KubeVirt field path it is about (`spec.domain.cpu.model: …`);
/// [`SpecError::field`] gives that path alone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec.domain.machine.type: machine type {machine_type} is not supported: use {allowed}"
    )]
    MachineType {
        machine_type: String,
        allowed: &'static str,
    },
    /// `spec.architecture` picks the emulator: only the ones this launcher runs.
    #[error("spec.architecture: unsupported architecture: {value:?}: this launcher runs amd64, arm64 and s390x guests")]
    Architecture { value: String },
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error(transparent)]
    Nic(#[from] NicError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl SpecError {
    /// The KubeVirt field path, e.g. `spec.domain.devices.interfaces[0].model`.
    pub fn field(&self) -> &str {
        match self {
            SpecError::MachineType { .. } => "spec.domain.machine.type",
            SpecError::Architecture { .. } => "spec.architecture",
            SpecError::Cpu(e) => e.field(),
            SpecError::Disk(e) => e.field(),
            SpecError::Firmware(e) => e.field(),
            SpecError::Nic(e) => e.field(),
            SpecError::Device(e) => e.field(),
        }
    }

    /// What is wrong, without the field path.
    pub fn message(&self) -> String {
        let all = self.to_string();
        match all
            .strip_prefix(self.field())
            .and_then(|m| m.strip_prefix(": "))
        {
            Some(m) => m.to_string(),
            None => all,
        }
    }
}

/// A quantity (memory, capacity) that cannot be read as a byte count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{field}: {quantity}: {reason}")]
    Invalid {
        field: String,
        quantity: String,
        reason: String,
    },
    #[error("{field}: {quantity} is out of range")]
    OutOfRange { field: String, quantity: String },
}

impl SizeError {
    pub fn field(&self) -> &str {
        match self {
            SizeError::Invalid { field, .. } | SizeError::OutOfRange { field, .. } => field,
        }
    }
}

pub use cpu::CpuError;
pub use devices::DeviceError;
pub use disks::{CloudInitError, DiskError};
pub use firmware::FirmwareError;
pub use nics::NicError;

/// How host ports for masquerade `ports` are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPorts {
    /// A free loopback port picked by the kernel for each forwarded port (bind to port 0).
    Ephemeral,
    /// `base + n` for the n-th forwarded port of the VMI (deterministic; tests, fixed setups).
    Base(u16),
    /// The host port equals the guest port (fails at start if it is taken).
    Same,
}

/// What the VMI cannot say by itself: where things live on this host and what the host can do.
/// The handler (or `launcher run`) fills it; `Environment::detect` gives sensible host values.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The per-VMI directory: sockets, logs, overlays, cloud-init images.
    pub dir: PathBuf,
    pub accelerator: Accelerator,
    /// Host TSC frequency, used for microvm's `tsc_early_khz` under TCG.
    pub host_tsc_khz: u64,
    /// CPU models `qemu-system-x86_64 -cpu help` lists; `None` trusts any named model.
    pub qemu_cpu_models: Option<BTreeSet<String>>,
    /// OCI image layout used for containerDisk and kernelBoot images.
    pub image_store: Option<PathBuf>,
    /// persistentVolumeClaim `claimName` → disk image file (the local-path provisioner's file).
    pub pvc_paths: BTreeMap<String, PathBuf>,
    /// dataVolume `name` → disk image file.
    pub data_volume_paths: BTreeMap<String, PathBuf>,
    /// Claims whose volume is on this node only (`NodeVolumes::local_claims`): a live
    /// migration copies them. A dataVolume is named by its claim's name, which is its own.
    pub node_local_claims: BTreeSet<String>,
    /// Cloud-init data resolved from `secretRef`/`networkDataSecretRef`, by volume name.
    pub cloud_init_secrets: BTreeMap<String, ResolvedCloudInit>,
    /// Multus network name → Linux bridge name, for `bridge` interfaces on a multus network.
    /// The pod network's bridge is `pod_bridge`.
    pub bridges: BTreeMap<String, String>,
    pub pod_bridge: String,
    pub host_ports: HostPorts,
    /// Address host ports are bound to (masquerade `ports`).
    pub host_port_address: String,
    /// Directory of the OVMF images (Debian `ovmf`).
    pub ovmf_dir: PathBuf,
    /// arm64 UEFI (Debian's `qemu-efi-aarch64`: AAVMF_CODE.fd, AAVMF_VARS.fd).
    pub aavmf_dir: PathBuf,
    pub defaults: DefaultsConfig,
    /// hugetlbfs mounts by page size in bytes (`/proc/mounts`); guest RAM on hugepages of a
    /// size with no mount is refused.
    pub hugetlbfs: BTreeMap<u64, PathBuf>,
    /// The pod network virt-handler set up (`network.json`); without one, masquerade is QEMU
    /// user networking.
    pub pod_network: Option<crate::api::PodNetworkInfo>,
}

/// What the handler resolved from Secrets for one cloudInitNoCloud/cloudInitConfigDrive volume
/// (handed over in `volumes.json`, [`crate::api::NodeVolumes::cloud_init`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedCloudInit {
    /// The `secretRef` Secret's `userdata` (else `userData`) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The `networkDataSecretRef` Secret's `networkdata` (else `networkData`) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    /// `spec.accessCredentials` SSH public keys propagated by this volume's kind (`noCloud` or
    /// `configDrive`): every non-empty value of each Secret, Secrets in spec order, keys of one
    /// Secret by name, as KubeVirt numbers them (`"0"`, `"1"`, ...) in the meta-data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
}

impl Environment {
    /// Values for this host: TSC rate from /proc/cpuinfo, OVMF in
    /// /usr/share/OVMF, ephemeral host ports on 127.0.0.1, KubeVirt's single-node masquerade
    /// default binding.
    pub fn detect(dir: &Path, accelerator: Accelerator) -> Environment {
        let host_tsc_khz = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("cpu MHz"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|mhz| (mhz * 1000.0) as u64)
            .filter(|k| *k > 0)
            .unwrap_or(2_000_000);
        Environment {
            host_tsc_khz,
            hugetlbfs: std::fs::read_to_string("/proc/mounts")
                .map(|m| hugetlbfs_mounts(&m))
                .unwrap_or_default(),
            ..Environment::fixed(dir, accelerator)
        }
    }

    /// Deterministic values that need no look at the host (golden tests).
    pub fn fixed(dir: &Path, accelerator: Accelerator) -> Environment {
        Environment {
            dir: dir.to_path_buf(),
            accelerator,
            host_tsc_khz: 2_000_000,
            qemu_cpu_models: None,
            image_store: None,
            pvc_paths: BTreeMap::new(),
            data_volume_paths: BTreeMap::new(),
            node_local_claims: BTreeSet::new(),
            cloud_init_secrets: BTreeMap::new(),
            bridges: BTreeMap::new(),
            pod_bridge: "br0".into(),
            host_ports: HostPorts::Ephemeral,
            host_port_address: "127.0.0.1".into(),
            ovmf_dir: PathBuf::from("/usr/share/OVMF"),
            aavmf_dir: PathBuf::from(crate::qemu::AAVMF_DIR),
            defaults: DefaultsConfig {
                default_network_interface: kubevirt_api::defaults::DefaultBinding::Masquerade,
                ..DefaultsConfig::default()
            },
            hugetlbfs: BTreeMap::from([
                (2 << 20, PathBuf::from("/dev/hugepages")),
                (1 << 30, PathBuf::from("/dev/hugepages1G")),
            ]),
            pod_network: None,
        }
    }
}

/// hugetlbfs mounts in `/proc/mounts` text, by page size (`pagesize=2M`; the first mount of
/// each size wins). Mount points are octal-escaped there (`\040` for a space).
pub fn hugetlbfs_mounts(mounts: &str) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "hugetlbfs" {
            continue;
        }
        let size = f[3]
            .split(',')
            .find_map(|o| o.strip_prefix("pagesize="))
            .and_then(|v| {
                let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
                let n: u64 = n.parse().ok()?;
                match unit {
                    "K" => Some(n << 10),
                    "M" => Some(n << 20),
                    "G" => Some(n << 30),
                    _ => None,
                }
            });
        if let Some(size) = size {
            found
                .entry(size)
                .or_insert_with(|| PathBuf::from(unescape_mount(f[1])));
        }
    }
    found
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // `\ooo` with a first digit of at most 3 (larger does not fit a byte: kept as is).
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CPU models `qemu -cpu help` lists (`None` if QEMU cannot be asked).
pub fn qemu_cpu_models(qemu_binary: &str) -> Option<BTreeSet<String>> {
    std::process::Command::new(qemu_binary)
        .args(["-cpu", "help"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_cpu_models(&String::from_utf8_lossy(&o.stdout)))
}

/// `qemu-system-x86_64 -cpu help` lines look like `x86 Skylake-Client  Intel Core ...`.
pub fn parse_cpu_models(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| l.trim().strip_prefix("x86 "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// KubeVirt's default PC machine (ICH9, PCIe, AHCI, ACPI).
    Q35,
    /// Firecracker-like minimal machine: virtio-mmio only, no PCI, no firmware, kernel boot.
    Microvm,
    /// QEMU's arm `virt` machine (KubeVirt's arm64 default): PCIe, GICv3, a PL011 UART, UEFI
    /// (AAVMF) or a kernel loaded directly; no ISA devices, no SATA.
    Virt,
    /// QEMU's s390x `s390-ccw-virtio` machine (KubeVirt's s390x default): no PCI, every device
    /// on the channel subsystem (`virtio-*-ccw`), the console on SCLP, the s390-ccw firmware
    /// built into QEMU (no UEFI), no ACPI, no SMBIOS, no USB, no SATA.
    #[serde(rename = "s390-ccw-virtio")]
    S390Ccw,
}

impl Profile {
    /// The transport suffix of QEMU's virtio device names (`virtio-blk-pci`,
    /// `virtio-blk-device` on microvm's virtio-mmio, `virtio-blk-ccw` on s390x).
    pub fn virtio_transport(self) -> &'static str {
        match self {
            Profile::Q35 | Profile::Virt => "pci",
            Profile::Microvm => "device",
            Profile::S390Ccw => "ccw",
        }
    }

    /// Whether the machine has PCI (ROM BARs, vfio-pci, PCI-only devices).
    pub fn has_pci(self) -> bool {
        matches!(self, Profile::Q35 | Profile::Virt)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuSpec {
    /// Sockets at boot.
    pub sockets: u32,
    /// Sockets the machine can grow to without a restart (`spec.domain.cpu.maxSockets`; equal
    /// to `sockets` when nothing can be hotplugged, e.g. on microvm).
    pub max_sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// The model the backend uses (already mapped for the accelerator): `host`, `max`, or a name.
    pub model: String,
    /// `+name` (require/force/optional) or `-name` (disable/forbid).
    pub features: Vec<String>,
}

impl CpuSpec {
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }

    /// vCPUs the machine can have (QEMU's `maxcpus`).
    pub fn max_vcpus(&self) -> u32 {
        self.max_sockets * self.cores * self.threads
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySpec {
    /// Guest memory at boot.
    pub bytes: u64,
    /// Page size in bytes when the guest RAM is backed by hugepages, with the mount to use.
    pub hugepages: Option<Hugepages>,
    /// Memory that can be plugged in while the guest runs (a virtio-mem device), when
    /// `spec.domain.memory.maxGuest` allows it.
    pub hotplug: Option<MemoryHotplug>,
}

/// A virtio-mem device of `max_bytes - bytes`, plugged in `block_size` steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryHotplug {
    /// `spec.domain.memory.maxGuest`: boot memory plus the device's size.
    pub max_bytes: u64,
    pub block_size: u64,
}

/// The QOM id of the virtio-mem device (`/machine/peripheral/<id>`).
pub const VIRTIO_MEM_ID: &str = "virtio-mem0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hugepages {
    pub page_size: u64,
    /// The hugetlbfs mount of that page size.
    pub mount: PathBuf,
    /// This VMI's own directory beneath it (`kubevirt-rs/<namespace>/<name>`), QEMU's
    /// `mem-path`: created by the launcher for QEMU's user, removed when the VMI ends.
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Firmware {
    /// SeaBIOS, boots a disk.
    Bios,
    /// OVMF; `vars` is the VMI's own copy of the variable store (made by `volumes::prepare`).
    Efi {
        code: PathBuf,
        vars_template: PathBuf,
        vars: PathBuf,
        secure_boot: bool,
    },
    /// Direct kernel boot (firmware.kernelBoot); `kernel`/`initrd` are files in the VMI dir
    /// that `volumes::prepare` extracts from `image`.
    Kernel(KernelBoot),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Where the files come from, if they still have to be extracted.
    pub image: Option<String>,
    pub kernel_path: String,
    pub initrd_path: Option<String>,
    /// Extract `vmlinux` beside `kernel_path` instead of a `vmlinuz` when the image has one:
    /// an uncompressed PVH ELF skips ~4 s of decompression under TCG. Off with EFI (OVMF needs
    /// the bzImage's EFI stub).
    pub prefer_vmlinux: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    Virtio,
    Sata,
    Scsi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    Disk,
    Cdrom,
    Lun,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Where a disk's file comes from, i.e. what `volumes::prepare` has to do before QEMU opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DiskSource {
    /// An existing file the handler resolved (persistentVolumeClaim, dataVolume).
    File,
    /// hostDisk `Disk`: an existing file at a path the spec chose (opened without following
    /// symlinks anywhere on the path before it is given to QEMU's user).
    HostDisk,
    /// hostDisk `DiskOrCreate`: a sparse raw file of `capacity` bytes if it does not exist.
    HostDiskOrCreate { capacity: u64 },
    /// containerDisk: the first file under `/disk/` (or `path`) of `image` is extracted to
    /// `base` once, read-only; `DiskSpec::path` is a qcow2 overlay on it.
    ContainerDisk {
        image: String,
        path: Option<String>,
        base_dir: PathBuf,
    },
    /// emptyDisk: a sparse qcow2 of `capacity` bytes, removed with the VMI.
    EmptyDisk { capacity: u64 },
    /// cloudInitNoCloud / cloudInitConfigDrive: an ISO9660 image written by the launcher.
    CloudInit(CloudInitData),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskSpec {
    /// The VMI disk name.
    pub name: String,
    pub device: DiskDevice,
    pub bus: Bus,
    pub boot_order: Option<u32>,
    /// QEMU/libvirt cache mode: none, writethrough, writeback.
    pub cache: Option<String>,
    /// native or threads.
    pub io: Option<String>,
    pub readonly: bool,
    pub format: DiskFormat,
    pub path: PathBuf,
    pub serial: Option<String>,
    pub source: DiskSource,
    /// What a live migration does with it (block migration, docs/migration.md).
    pub migration: DiskMigration,
}

/// What a live migration does with a disk's data. The target launcher starts from the same
/// VMI, so it makes every file the launcher makes itself again (same names, same virtual
/// sizes); what the guest wrote to a file on this node only must be copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DiskMigration {
    /// On storage both nodes see (a persistentVolumeClaim or dataVolume not marked node-local
    /// in `volumes.json`, a hostDisk with `shared: true`): the target opens the same data.
    Shared,
    /// Nothing the guest can change: read-only disks and CD-ROMs (KubeVirt skips them too) and
    /// cloud-init ISOs, which the target writes again from the spec.
    NotCopied,
    /// Written by the guest, on this node only: copied with `blockdev-mirror` to the target's
    /// NBD export of the same disk.
    Copy(MirrorSync),
}

/// `blockdev-mirror`'s `sync`: what of the disk's backing chain is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MirrorSync {
    /// The whole disk (emptyDisks, hostDisks, node-local volumes).
    Full,
    /// Only the top image: a containerDisk's overlay, whose base the target extracts from the
    /// same image.
    Top,
}

impl MirrorSync {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorSync::Full => "full",
            MirrorSync::Top => "top",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    Virtio,
    E1000,
    E1000e,
    Rtl8139,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForward {
    pub name: Option<String>,
    /// tcp or udp.
    pub protocol: String,
    pub host_address: String,
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum NetBackend {
    /// KubeVirt masquerade on one host without privileges: QEMU user networking (slirp) with
    /// KubeVirt's addresses and `ports` forwarded from host ports.
    Masquerade {
        network: String,
        gateway: String,
        guest: String,
        forwards: Vec<PortForward>,
    },
    /// A tap device the launcher creates and attaches to a Linux bridge of the node (a
    /// `bridge` interface without a pod network).
    Bridge { tap: String, bridge: String },
    /// A tap in the VMI's pod network namespace on the bridge [`pod_bridge`] of the pod
    /// interface `interface` (`eth0`, or `netN` for a Multus network), which the launcher opens
    /// and hands to QEMU as file descriptor `fd` (QEMU's user cannot open `/dev/net/tun`),
    /// bound as KubeVirt binds a pod interface.
    Pod {
        tap: String,
        fd: i32,
        interface: String,
        binding: PodBinding,
    },
    /// KubeVirt's `sriov` binding: an SR-IOV network's virtual function passed through to the
    /// guest as a vfio-pci device (no netdev; the launcher checks at start that the device is
    /// on this node and bound to vfio-pci).
    Sriov { pci_address: String },
    /// KubeVirt's `passtBinding`: Debian's passt, in the pod's namespace, gives the guest the
    /// pod's address and forwards the pod's ports (the listed ones, or all); QEMU reaches it
    /// through a `stream` netdev on `socket`.
    Passt {
        socket: PathBuf,
        ports: Vec<PodPort>,
    },
}

/// How a guest NIC reaches the pod's interface (KubeVirt's bindings on the pod network).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PodBinding {
    /// The guest is [`MASQUERADE_GUEST`] behind [`MASQUERADE_GATEWAY`] on the bridge; traffic
    /// out is masqueraded to the pod IP, and traffic to the pod IP is forwarded to the guest:
    /// the listed ports, or everything when the interface lists none (KubeVirt's rule).
    Masquerade { ports: Vec<PodPort> },
    /// The pod's interface joins the bridge and the guest takes over the pod's IP (served by
    /// DHCP from [`BRIDGE_DHCP_SERVER`]).
    Bridge,
}

/// One `ports` entry of a masquerade interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPort {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: u16,
}

/// The bridge between a pod interface and the guest's tap, as KubeVirt names it (`k6t-eth0`,
/// `k6t-net1`); `interface` is one of [`crate::api::PodInterface::name_for`]'s names.
pub fn pod_bridge(interface: &str) -> String {
    format!("k6t-{interface}")
}
/// The address the launcher's DHCP server uses on a [`pod_bridge`] for the bridge binding
/// (KubeVirt's fake link-local server address).
pub const BRIDGE_DHCP_SERVER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 75, 10);
/// The descriptor the first pod tap is given to QEMU as (the next ones follow).
pub const TAP_FD_BASE: i32 = 3;

/// KubeVirt's masquerade addresses (pkg/network: the VM gets 10.0.2.2 behind 10.0.2.1).
pub const MASQUERADE_NETWORK: &str = "10.0.2.0/24";
pub const MASQUERADE_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 1);
pub const MASQUERADE_GUEST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);
/// The prefix of [`MASQUERADE_NETWORK`].
pub const MASQUERADE_PREFIX: u8 = 24;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NicSpec {
    pub name: String,
    pub model: NicModel,
    pub mac: Option<String>,
    pub boot_order: Option<u32>,
    pub backend: NetBackend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogAction {
    Reset,
    Poweroff,
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MachineSpec {
    /// `namespace/name` of the VMI, for logs and the QEMU process name.
    pub vmi: String,
    pub uid: Option<String>,
    /// The guest's architecture (`spec.architecture`): which `qemu-system-*` runs it.
    pub arch: Arch,
    pub profile: Profile,
    pub accelerator: Accelerator,
    pub cpu: CpuSpec,
    pub memory: MemorySpec,
    pub firmware: Firmware,
    pub uuid: Option<String>,
    pub smbios_serial: Option<String>,
    pub acpi: bool,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    /// Serial console on a unix socket (`autoattachSerialConsole`, default on).
    pub serial_console: bool,
    /// VGA + VNC on a unix socket (`autoattachGraphicsDevice`, default on; q35 only).
    pub vnc: bool,
    /// USB tablet (`inputs`).
    pub tablet: bool,
    pub rng: bool,
    /// virtio-balloon (`autoattachMemBalloon`, default on) with stats polled every N seconds.
    pub balloon: Option<u32>,
    pub watchdog: Option<WatchdogAction>,
    /// `spec.startStrategy: Paused`.
    pub start_paused: bool,
    pub termination_grace_period_seconds: u64,
    pub dir: PathBuf,
}

impl MachineSpec {
    /// The VMI directory's layout; its file names have one owner, `api::VmiDir`.
    pub fn vmi_dir(&self) -> crate::api::VmiDir {
        crate::api::VmiDir::unchecked(&self.dir)
    }
    /// The one directory QEMU may write (it creates its sockets there): owned by QEMU's
    /// user, so an unprivileged QEMU cannot touch anything else of the VMI directory.
    pub fn sockets_dir(&self) -> PathBuf {
        self.vmi_dir().sockets_dir()
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.vmi_dir().qmp_socket()
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.vmi_dir().serial_socket()
    }
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.vmi_dir().guest_agent_socket()
    }
    /// Where QEMU creates its VNC socket.
    pub fn qemu_vnc_socket(&self) -> PathBuf {
        self.vmi_dir().qemu_vnc_socket()
    }
    /// `DIR/vnc.sock`, what virt-api connects to: a hard link to [`Self::qemu_vnc_socket`].
    pub fn vnc_socket(&self) -> PathBuf {
        self.vmi_dir().vnc_socket()
    }
}

/// The balloon stats polling period KubeVirt configures (virt-launcher's `memBalloonStatsPeriod`).
pub const BALLOON_STATS_PERIOD_SECONDS: u32 = 10;

fn bytes_of(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    field: &str,
) -> Result<u64, SizeError> {
    let v = Quantity::from_k8s(q)
        .map_err(|e| SizeError::Invalid {
            field: field.into(),
            quantity: q.0.clone(),
            reason: e.to_string(),
        })?
        .value();
    u64::try_from(v).map_err(|_| SizeError::OutOfRange {
        field: field.into(),
        quantity: q.0.clone(),
    })
}

/// A QEMU id made of the VMI name: KubeVirt names are DNS labels, so only `.` needs care.
pub fn qemu_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}-{clean}")
}

/// Raw or qcow2, from the first four bytes (`QFI\xfb`). A file that cannot be read is raw:
/// QEMU then reports it missing with its own words.
pub fn detect_format(path: &Path) -> DiskFormat {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) if &magic == b"QFI\xfb" => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

mod cpu;
mod devices;
mod disks;
mod firmware;
mod nics;

/// `from_vmi` of a VMI whose `spec:` is `spec` (YAML, indented by two), on a TCG host with
/// `/d` as its directory: for the unit tests of the parts.
#[cfg(test)]
fn convert(spec: &str) -> Result<MachineSpec, SpecError> {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: t, namespace: ns}}\nspec:\n{spec}"
    );
    let env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
    MachineSpec::from_vmi(&parse_vmi(&yaml).expect("test YAML"), &env)
}

/// What every part of the conversion reads: the defaulted VMI, the host, the profile.
struct Ctx<'a> {
    vmi: &'a VirtualMachineInstance,
    env: &'a Environment,
    name: &'a str,
    namespace: &'a str,
    microvm: bool,
    profile: Profile,
}

impl MachineSpec {
    /// The one conversion from a VMI to a machine. The VMI is defaulted first (KubeVirt's
    /// `SetDefaultVirtualMachineInstance`), so a VMI straight from a user's file works.
    pub fn from_vmi(
        vmi: &VirtualMachineInstance,
        env: &Environment,
    ) -> Result<MachineSpec, SpecError> {
        let mut vmi = vmi.clone();
        default_vmi(&mut vmi, &env.defaults);
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let namespace = vmi
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = &vmi.spec;
        let domain = &spec.domain;

        // Architecture (defaulting filled it in), then the machine profile.
        let arch_value = spec.architecture.as_deref().unwrap_or("");
        let Some(arch) = Arch::parse(arch_value) else {
            return Err(SpecError::Architecture {
                value: arch_value.into(),
            });
        };
        let machine_type = domain
            .machine
            .as_ref()
            .and_then(|m| m.r#type.clone())
            .unwrap_or_else(|| arch.default_machine_type().into());
        let profile = match (arch, machine_type.as_str()) {
            (Arch::Amd64, "microvm") => Profile::Microvm,
            (Arch::Amd64, t) if t == "q35" || t.starts_with("pc-q35") => Profile::Q35,
            (Arch::Arm64, t) if t == "virt" || t.starts_with("virt-") => Profile::Virt,
            (Arch::S390x, t) if t == "s390-ccw-virtio" || t.starts_with("s390-ccw-virtio-") => {
                Profile::S390Ccw
            }
            (a, t) => {
                return Err(SpecError::MachineType {
                    machine_type: t.into(),
                    allowed: match a {
                        Arch::Amd64 => "q35 or microvm",
                        Arch::Arm64 => "virt (arm64)",
                        Arch::S390x => "s390-ccw-virtio (s390x)",
                    },
                })
            }
        };
        let microvm = profile == Profile::Microvm;
        // A guest of another architecture than the host's is emulated, whatever KVM can do.
        let accelerator = if Arch::host() == Some(arch) {
            env.accelerator
        } else {
            Accelerator::Tcg
        };
        let env_foreign;
        let env = if accelerator == env.accelerator {
            env
        } else {
            env_foreign = Environment {
                accelerator,
                ..env.clone()
            };
            &env_foreign
        };

        let ctx = Ctx {
            vmi: &vmi,
            env,
            name: &name,
            namespace: &namespace,
            microvm,
            profile,
        };
        let (cpu, memory) = cpu::cpu_and_memory(&ctx)?;
        let disks = disks::disks(&ctx)?;
        let (firmware, acpi, uuid, smbios_serial) = firmware::firmware(&ctx)?;
        let nics = nics::nics(&ctx)?;
        let devices::Devices {
            serial_console,
            vnc,
            tablet,
            rng,
            balloon,
            watchdog,
            start_paused,
        } = devices::devices(&ctx)?;

        Ok(MachineSpec {
            vmi: format!("{namespace}/{name}"),
            uid: vmi.metadata.uid.clone(),
            arch,
            profile,
            accelerator: env.accelerator,
            cpu,
            memory,
            firmware,
            uuid,
            smbios_serial,
            acpi,
            disks,
            nics,
            serial_console,
            vnc,
            tablet,
            rng,
            balloon,
            watchdog,
            start_paused,
            termination_grace_period_seconds: spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
            dir: env.dir.clone(),
        })
    }
}

/// FNV-1a: stable across builds, unlike std's hasher.
fn fnv1a(seed: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A tap name of at most 15 characters (IFNAMSIZ), stable for a VMI and interface index.
fn tap_name(seed: &str, index: usize) -> String {
    format!("tap{:08x}n{index}", fnv1a(seed))
}

/// A MAC for a guest NIC that names none, stable for a VMI and interface (QEMU's `52:54:00`
/// prefix, as libvirt generates them): the launcher's DHCP server must know it in advance.
fn generated_mac(seed: &str, interface: &str) -> String {
    let h = fnv1a(&format!("{seed}/{interface}")).to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[1], h[2], h[3])
}

fn free_port(addr: &str, protocol: &str) -> std::io::Result<u16> {
    if protocol == "udp" {
        Ok(std::net::UdpSocket::bind((addr, 0))?.local_addr()?.port())
    } else {
        Ok(std::net::TcpListener::bind((addr, 0))?.local_addr()?.port())
    }
}

/// Parse a VMI from YAML or JSON.
pub fn parse_vmi(text: &str) -> Result<VirtualMachineInstance, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlbfs_mounts_are_read_by_page_size() {
        let mounts = "proc /proc proc rw 0 0\n\
            hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
            none /mnt/huge\\040pages hugetlbfs rw,pagesize=1024M 0 0\n\
            none /second hugetlbfs rw,pagesize=2M 0 0\n\
            none /odd hugetlbfs rw,pagesize=xM 0 0\n\
            tmpfs /tmp tmpfs rw,pagesize=2M 0 0\n\
            short line\n";
        let m = hugetlbfs_mounts(mounts);
        assert_eq!(
            m,
            BTreeMap::from([
                (2 << 20, PathBuf::from("/dev/hugepages")),
                (1 << 30, PathBuf::from("/mnt/huge pages")),
            ])
        );
        // A backslash that is not an octal escape byte is kept as it is.
        assert_eq!(unescape_mount("/a\\777b\\04"), "/a\\777b\\04");
    }

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        parse_vmi(yaml).unwrap()
    }

    const BASE: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: t, namespace: ns}
spec:
  domain:
    machine: {type: microvm}
    memory: {guest: 256Mi}
    firmware:
      kernelBoot:
        container: {image: demo:latest, kernelPath: /boot/vmlinux, initrdPath: /boot/initrd.img}
    devices:
      interfaces:
      - {name: default, masquerade: {}, model: e1000}
  networks:
  - {name: default, pod: {}}
"#;

    #[test]
    fn microvm_with_e1000_names_the_field() {
        let env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        let err = MachineSpec::from_vmi(&vmi(BASE), &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.domain.devices.interfaces[0].model: microvm supports only virtio"
        );
    }

    #[test]
    fn microvm_gets_tsc_hints_and_max_cpu_under_tcg() {
        let env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        let s = MachineSpec::from_vmi(&vmi(&BASE.replace("model: e1000", "model: virtio")), &env)
            .unwrap();
        assert_eq!(s.cpu.model, "max");
        let Firmware::Kernel(k) = &s.firmware else {
            panic!()
        };
        assert_eq!(k.cmdline, "tsc_early_khz=2000000 lpj=4000000");
        assert!(!s.vnc);
    }

    #[test]
    fn host_model_is_host_under_kvm_and_a_named_model_must_exist() {
        let y = BASE
            .replace("model: e1000", "model: virtio")
            .replace("machine: {type: microvm}", "machine: {type: q35}");
        let env = Environment::fixed(Path::new("/d"), Accelerator::Kvm);
        assert_eq!(
            MachineSpec::from_vmi(&vmi(&y), &env).unwrap().cpu.model,
            "host"
        );
        let mut env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        env.qemu_cpu_models = Some(parse_cpu_models(
            "x86 Skylake-Client  Intel\nx86 max  Enables all\n",
        ));
        let y2 = y.replace(
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {model: Nehalem}",
        );
        let err = MachineSpec::from_vmi(&vmi(&y2), &env).unwrap_err();
        assert_eq!(err.field(), "spec.domain.cpu.model");
        let y3 = y2.replace("Nehalem", "Skylake-Client");
        assert_eq!(
            MachineSpec::from_vmi(&vmi(&y3), &env).unwrap().cpu.model,
            "Skylake-Client"
        );
    }

    /// Security issue 10: names that would leave the VMI directory or inject QEMU options,
    /// fed straight to `from_vmi` (no admission), fail with the field named, and nothing is
    /// created anywhere.
    #[test]
    fn traversal_and_injection_names_are_refused_with_their_field() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vmi");
        std::fs::create_dir(&dir).unwrap();
        let env = Environment::fixed(&dir, Accelerator::Tcg);
        let with_disk = |name: &str, source: &str| {
            BASE.replace("model: e1000", "model: virtio").replace(
                "      interfaces:",
                &format!(
                    "      disks: [{{name: {name:?}, disk: {{bus: virtio}}}}]\n      interfaces:"
                ),
            ) + &format!("  volumes: [{{name: {name:?}, {source}}}]\n")
        };
        for name in ["../x", "a/b", "..", "x,romfile=/etc/shadow", "A"] {
            for source in [
                "containerDisk: {image: demo:latest}",
                "emptyDisk: {capacity: 1Gi}",
                "cloudInitNoCloud: {userData: x}",
            ] {
                let err = MachineSpec::from_vmi(&vmi(&with_disk(name, source)), &env).unwrap_err();
                assert_eq!(
                    err.field(),
                    "spec.volumes[0].name",
                    "{name} {source}: {err}"
                );
                assert!(err.message().contains("DNS-1123"), "{err}");
            }
        }
        let y = BASE.replace("model: e1000", "model: virtio").replace(
            "{name: default, masquerade",
            "{name: \"x,romfile=/etc/shadow\", masquerade",
        );
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(err.field(), "spec.domain.devices.interfaces[0].name");
        let y = BASE.replace(
            "model: e1000",
            "model: virtio, macAddress: \"02:00:00:00:00:01,romfile=/x\"",
        );
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(err.field(), "spec.domain.devices.interfaces[0].macAddress");
        let y = BASE.replace("model: e1000", "model: virtio").replace(
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {model: max, features: [{name: \"pcid,romfile=/x\"}]}",
        );
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(err.field(), "spec.domain.cpu.features[0].name");
        let y = with_disk("d", "hostDisk: {path: /var/../etc/shadow, type: Disk}");
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(err.field(), "spec.volumes[0].hostDisk.path");
        let y = with_disk("d", "hostDisk: {path: /etc/shadow, type: Disk}");
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(err.field(), "spec.volumes[0].hostDisk.path");
        // Nothing was created, inside or outside the VMI directory.
        let mut left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["vmi"]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    /// A MachineSpec built by hand (not through `from_vmi`) with a traversal in a disk path:
    /// `volumes::prepare` refuses it and creates nothing outside the VMI directory.
    #[test]
    fn prepare_refuses_disk_files_outside_the_vmi_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vmi");
        std::fs::create_dir(&dir).unwrap();
        let env = Environment::fixed(&dir, Accelerator::Tcg);
        let y = BASE.replace("model: e1000", "model: virtio").replace(
            "      interfaces:",
            "      disks: [{name: ci, disk: {bus: virtio}}]\n      interfaces:",
        ) + "  volumes: [{name: ci, cloudInitNoCloud: {userData: x}}]\n";
        let mut spec = MachineSpec::from_vmi(&vmi(&y), &env).unwrap();
        spec.firmware = Firmware::Bios;
        spec.disks[0].path = dir.join("disks/../../escaped.iso");
        let err =
            crate::volumes::prepare(&spec, None, None, crate::confine::QemuUser::ROOT).unwrap_err();
        assert!(err.to_string().contains("not beneath"), "{err}");
        assert!(!t.path().join("escaped.iso").exists());
        // A symlink planted as the disks directory is not followed either.
        std::fs::remove_dir_all(dir.join("disks")).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("disks")).unwrap();
        spec.disks[0].path = dir.join("disks/ci.iso");
        assert!(
            crate::volumes::prepare(&spec, None, None, crate::confine::QemuUser::ROOT).is_err()
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // And the same spec with a real directory works.
        std::fs::remove_file(dir.join("disks")).unwrap();
        crate::volumes::prepare(&spec, None, None, crate::confine::QemuUser::ROOT).unwrap();
        assert!(dir.join("disks/ci.iso").is_file());
    }

    #[test]
    fn spec_error_wraps_the_family_error_and_keeps_field_and_message() {
        let y = BASE.replace(
            "machine: {type: microvm}",
            "machine: {type: \"pc-i440fx-2.0,x=y\"}",
        );
        let env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        let err = MachineSpec::from_vmi(&vmi(&y), &env).unwrap_err();
        assert_eq!(
            err,
            SpecError::MachineType {
                machine_type: "pc-i440fx-2.0,x=y".into(),
                allowed: "q35 or microvm",
            }
        );
        assert_eq!(err.field(), "spec.domain.machine.type");
        assert_eq!(
            err.message(),
            "machine type pc-i440fx-2.0,x=y is not supported: use q35 or microvm"
        );
        let err = MachineSpec::from_vmi(&vmi(BASE), &env).unwrap_err();
        assert!(
            matches!(&err, SpecError::Nic(NicError::MicrovmModel { field }) if field == "spec.domain.devices.interfaces[0].model"),
            "{err:?}"
        );
        assert_eq!(err.field(), "spec.domain.devices.interfaces[0].model");
        assert_eq!(err.message(), "microvm supports only virtio");
        // Usable as a source error by callers (`LaunchError::Spec`).
        let boxed: Box<dyn std::error::Error> = Box::new(err.clone());
        assert_eq!(boxed.to_string(), err.to_string());
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert!(tap_name("a-very-long-namespace/and-a-long-name", 12).len() <= 15);
    }
}
