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
use kubevirt_api::defaults::{default_vmi, DefaultsConfig};
use kubevirt_api::quantity::Quantity;
use kubevirt_api::VirtualMachineInstance;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A VMI field the backend cannot honour (or a value it cannot read), with its field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// KubeVirt field path, e.g. `spec.domain.devices.interfaces[0].model`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

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
    pub defaults: DefaultsConfig,
}

/// Cloud-init data the handler resolved from Secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedCloudInit {
    pub user_data: Option<String>,
    pub network_data: Option<String>,
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
            cloud_init_secrets: BTreeMap::new(),
            bridges: BTreeMap::new(),
            pod_bridge: "br0".into(),
            host_ports: HostPorts::Ephemeral,
            host_port_address: "127.0.0.1".into(),
            ovmf_dir: PathBuf::from("/usr/share/OVMF"),
            defaults: DefaultsConfig {
                default_network_interface: kubevirt_api::defaults::DefaultBinding::Masquerade,
                ..DefaultsConfig::default()
            },
        }
    }
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuSpec {
    pub sockets: u32,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySpec {
    pub bytes: u64,
    /// Page size in bytes when the guest RAM is backed by hugepages, with the mount to use.
    pub hugepages: Option<Hugepages>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hugepages {
    pub page_size: u64,
    pub mount: PathBuf,
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
    /// An existing file (persistentVolumeClaim, dataVolume, hostDisk `Disk`).
    File,
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
    /// A tap device the launcher creates and attaches to a Linux bridge.
    Bridge { tap: String, bridge: String },
}

/// KubeVirt's masquerade addresses (pkg/network: the VM gets 10.0.2.2 behind 10.0.2.1).
pub const MASQUERADE_NETWORK: &str = "10.0.2.0/24";
pub const MASQUERADE_GATEWAY: &str = "10.0.2.1";
pub const MASQUERADE_GUEST: &str = "10.0.2.2";

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
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    pub fn vnc_socket(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
}

/// The balloon stats polling period KubeVirt configures (virt-launcher's `memBalloonStatsPeriod`).
pub const BALLOON_STATS_PERIOD_SECONDS: u32 = 10;

fn bytes_of(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    field: &str,
) -> Result<u64, SpecError> {
    let v = Quantity::from_k8s(q)
        .map_err(|e| SpecError::new(field, format!("{}: {e}", q.0)))?
        .value();
    u64::try_from(v).map_err(|_| SpecError::new(field, format!("{} is out of range", q.0)))
}

fn positive(v: Option<i64>, field: &str) -> Result<u32, SpecError> {
    match v {
        None | Some(0) => Ok(1),
        Some(n) if n > 0 && n <= 512 => Ok(n as u32),
        Some(n) => Err(SpecError::new(
            field,
            format!("{n} must be between 1 and 512"),
        )),
    }
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
        let dev = &domain.devices;

        // Machine profile.
        let machine_type = domain
            .machine
            .as_ref()
            .and_then(|m| m.r#type.clone())
            .unwrap_or_else(|| "q35".into());
        let profile = match machine_type.as_str() {
            "microvm" => Profile::Microvm,
            t if t == "q35" || t.starts_with("pc-q35") => Profile::Q35,
            t => {
                return Err(SpecError::new(
                    "spec.domain.machine.type",
                    format!("machine type {t} is not supported: use q35 or microvm"),
                ))
            }
        };
        let microvm = profile == Profile::Microvm;

        // CPU.
        let cpu = domain.cpu.clone().unwrap_or_default();
        let requested_model = cpu.model.clone().unwrap_or_else(|| "host-model".into());
        let model = match (requested_model.as_str(), env.accelerator) {
            ("host-model" | "host-passthrough", Accelerator::Kvm) => "host".to_string(),
            // Under TCG there is no host CPU to copy: `max` enables everything TCG emulates.
            ("host-model" | "host-passthrough", Accelerator::Tcg) => "max".to_string(),
            (m, _) => {
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
                        format!("guest memory ({bytes} bytes) is not a multiple of the hugepage size {ps}"),
                    ));
                }
                Some(Hugepages { page_size, mount })
            }
        };
        let memory = MemorySpec { bytes, hugepages };

        // Volumes by name, then disks.
        let volumes: BTreeMap<&str, (usize, &kubevirt_api::Volume)> = spec
            .volumes
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), (i, v)))
            .collect();
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let mut disks = Vec::new();
        for (i, d) in dev.disks.iter().flatten().enumerate() {
            let dp = format!("spec.domain.devices.disks[{i}]");
            let Some(&(vi, vol)) = volumes.get(d.name.as_str()) else {
                return Err(SpecError::new(
                    format!("{dp}.name"),
                    format!("disk {} has no volume of the same name", d.name),
                ));
            };
            let vp = format!("spec.volumes[{vi}]");
            let (device, bus, readonly, bus_field) = if let Some(t) = &d.disk {
                (
                    DiskDevice::Disk,
                    t.bus.clone(),
                    t.readonly.unwrap_or(false),
                    format!("{dp}.disk.bus"),
                )
            } else if let Some(t) = &d.cdrom {
                (
                    DiskDevice::Cdrom,
                    t.bus.clone(),
                    t.readonly.unwrap_or(true),
                    format!("{dp}.cdrom.bus"),
                )
            } else if let Some(t) = &d.lun {
                (
                    DiskDevice::Lun,
                    t.bus.clone(),
                    t.readonly.unwrap_or(false),
                    format!("{dp}.lun.bus"),
                )
            } else {
                (DiskDevice::Disk, None, false, format!("{dp}.disk.bus"))
            };
            let bus = match bus.as_deref().unwrap_or("sata") {
                "virtio" => Bus::Virtio,
                "sata" => Bus::Sata,
                "scsi" => Bus::Scsi,
                b => {
                    return Err(SpecError::new(
                        bus_field,
                        format!(
                        "bus {b} is not supported by the QEMU backend: use virtio, sata or scsi"
                    ),
                    ))
                }
            };
            if microvm {
                if device == DiskDevice::Cdrom {
                    return Err(SpecError::new(
                        format!("{dp}.cdrom"),
                        "microvm has no cdrom device: use a disk with bus virtio",
                    ));
                }
                if bus != Bus::Virtio {
                    return Err(SpecError::new(bus_field, "microvm supports only virtio"));
                }
            }
            if device == DiskDevice::Cdrom && bus == Bus::Virtio {
                return Err(SpecError::new(
                    bus_field,
                    "Bus type virtio is invalid for CD-ROM device",
                ));
            }
            if device != DiskDevice::Cdrom && bus == Bus::Sata && readonly {
                return Err(SpecError::new(
                    format!("{dp}.disk.readonly"),
                    "sata hard-disks do not support read-only (QEMU's ide-hd refuses a read-only node): use bus virtio",
                ));
            }
            let cache = match d.cache.as_deref() {
                None | Some("") => None,
                Some(c @ ("none" | "writethrough" | "writeback")) => Some(c.to_string()),
                Some(c) => {
                    return Err(SpecError::new(
                        format!("{dp}.cache"),
                        format!("unknown cache mode {c}: use none, writethrough or writeback"),
                    ))
                }
            };
            let io = match d.io.as_deref() {
                None | Some("") => None,
                Some(m @ ("native" | "threads")) => Some(m.to_string()),
                Some(m) => {
                    return Err(SpecError::new(
                        format!("{dp}.io"),
                        format!("unknown io mode {m}: use native or threads"),
                    ))
                }
            };
            if io.as_deref() == Some("native") && cache.as_deref() != Some("none") {
                return Err(SpecError::new(
                    format!("{dp}.io"),
                    "io native needs cache none (O_DIRECT)",
                ));
            }
            let boot_order = match d.boot_order {
                None => None,
                Some(n) if n > 0 => Some(n as u32),
                Some(n) => {
                    return Err(SpecError::new(
                        format!("{dp}.bootOrder"),
                        format!("{n} must be 1 or more"),
                    ))
                }
            };
            let disk_dir = env.dir.join("disks");
            let (path, format, source) = if let Some(cd) = &vol.container_disk {
                (
                    disk_dir.join(format!("{}.qcow2", d.name)),
                    DiskFormat::Qcow2,
                    DiskSource::ContainerDisk {
                        image: cd.image.clone(),
                        path: cd.path.clone(),
                        base_dir: env.dir.join("container-disks").join(&d.name),
                    },
                )
            } else if let Some(hd) = &vol.host_disk {
                let path = PathBuf::from(&hd.path);
                match hd.r#type.as_str() {
                    "Disk" => (path.clone(), detect_format(&path), DiskSource::File),
                    "DiskOrCreate" => {
                        let capacity = match &hd.capacity {
                            Some(q) => bytes_of(q, &format!("{vp}.hostDisk.capacity"))?,
                            None => {
                                return Err(SpecError::new(
                                    format!("{vp}.hostDisk.capacity"),
                                    "DiskOrCreate needs a capacity",
                                ))
                            }
                        };
                        // KubeVirt's hostDisk is always a raw disk.img.
                        (
                            path,
                            DiskFormat::Raw,
                            DiskSource::HostDiskOrCreate { capacity },
                        )
                    }
                    t => {
                        return Err(SpecError::new(
                            format!("{vp}.hostDisk.type"),
                            format!("unknown type {t}: use Disk or DiskOrCreate"),
                        ))
                    }
                }
            } else if let Some(pvc) = &vol.persistent_volume_claim {
                let Some(path) = env.pvc_paths.get(&pvc.claim_name) else {
                    return Err(SpecError::new(
                        format!("{vp}.persistentVolumeClaim.claimName"),
                        format!(
                            "PersistentVolumeClaim {} is not available on this node",
                            pvc.claim_name
                        ),
                    ));
                };
                (path.clone(), detect_format(path), DiskSource::File)
            } else if let Some(dv) = &vol.data_volume {
                let Some(path) = env.data_volume_paths.get(&dv.name) else {
                    return Err(SpecError::new(
                        format!("{vp}.dataVolume.name"),
                        format!("DataVolume {} is not available on this node", dv.name),
                    ));
                };
                (path.clone(), detect_format(path), DiskSource::File)
            } else if let Some(ed) = &vol.empty_disk {
                let capacity = bytes_of(&ed.capacity, &format!("{vp}.emptyDisk.capacity"))?;
                (
                    disk_dir.join(format!("{}.qcow2", d.name)),
                    DiskFormat::Qcow2,
                    DiskSource::EmptyDisk { capacity },
                )
            } else if vol.cloud_init_no_cloud.is_some() || vol.cloud_init_config_drive.is_some() {
                let data =
                    crate::cloudinit::from_volume(vol, &vp, &vmi, &namespace, &hostname, env)?;
                (
                    disk_dir.join(format!("{}.iso", d.name)),
                    DiskFormat::Raw,
                    DiskSource::CloudInit(data),
                )
            } else {
                return Err(SpecError::new(
                    vp,
                    format!("volume {} has a source the launcher does not support (containerDisk, hostDisk, persistentVolumeClaim, dataVolume, emptyDisk, cloudInitNoCloud, cloudInitConfigDrive)", vol.name),
                ));
            };
            disks.push(DiskSpec {
                name: d.name.clone(),
                device,
                bus,
                boot_order,
                cache,
                io,
                readonly,
                format,
                path,
                serial: d.serial.clone(),
                source,
            });
        }
        if disks.iter().filter(|d| d.bus == Bus::Sata).count() > 6 {
            return Err(SpecError::new(
                "spec.domain.devices.disks",
                "q35 has 6 SATA ports: use virtio or scsi for more disks",
            ));
        }

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
            if microvm && env.accelerator == Accelerator::Tcg && !cmdline.contains("tsc_early_khz=")
            {
                // microvm has no PIT/HPET calibration source that works under TCG: without these
                // hints the kernel hangs after "Marking TSC unstable" (docs/ENVIRONMENT.md).
                let khz = env.host_tsc_khz;
                cmdline = format!("{cmdline} tsc_early_khz={khz} lpj={}", khz * 2)
                    .trim()
                    .to_string();
            }
            let kdir = env.dir.join("kernel-boot");
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
                vars: env.dir.join("OVMF_VARS.fd"),
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

        // Interfaces.
        let networks: BTreeMap<&str, &kubevirt_api::Network> = spec
            .networks
            .iter()
            .flatten()
            .map(|n| (n.name.as_str(), n))
            .collect();
        let mut nics = Vec::new();
        let mut next_port = 0u16;
        let tap_seed = format!("{namespace}/{name}");
        for (i, iface) in dev.interfaces.iter().flatten().enumerate() {
            let ip = format!("spec.domain.devices.interfaces[{i}]");
            let model = match iface.model.as_deref().unwrap_or("virtio") {
                "virtio" => NicModel::Virtio,
                "e1000" => NicModel::E1000,
                "e1000e" => NicModel::E1000e,
                "rtl8139" => NicModel::Rtl8139,
                m => {
                    return Err(SpecError::new(
                        format!("{ip}.model"),
                        format!("model {m} is not supported: use virtio, e1000, e1000e or rtl8139"),
                    ))
                }
            };
            if microvm && model != NicModel::Virtio {
                return Err(SpecError::new(
                    format!("{ip}.model"),
                    "microvm supports only virtio",
                ));
            }
            let Some(net) = networks.get(iface.name.as_str()) else {
                return Err(SpecError::new(
                    format!("{ip}.name"),
                    format!("interface {} has no network of the same name", iface.name),
                ));
            };
            let backend = if iface.masquerade.is_some() {
                if net.pod.is_none() {
                    return Err(SpecError::new(
                        format!("{ip}.masquerade"),
                        "masquerade is only allowed on the pod network",
                    ));
                }
                let mut forwards = Vec::new();
                for (j, p) in iface.ports.iter().flatten().enumerate() {
                    let pp = format!("{ip}.ports[{j}]");
                    let guest_port =
                        u16::try_from(p.port)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| {
                                SpecError::new(
                                    format!("{pp}.port"),
                                    format!("{} is not a port", p.port),
                                )
                            })?;
                    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                        "TCP" | "tcp" => "tcp",
                        "UDP" | "udp" => "udp",
                        x => {
                            return Err(SpecError::new(
                                format!("{pp}.protocol"),
                                format!("{x}: use TCP or UDP"),
                            ))
                        }
                    };
                    let host_port = match env.host_ports {
                        HostPorts::Same => guest_port,
                        HostPorts::Base(b) => b
                            .checked_add(next_port)
                            .ok_or_else(|| SpecError::new(pp.clone(), "host port out of range"))?,
                        HostPorts::Ephemeral => free_port(&env.host_port_address, protocol)
                            .map_err(|e| {
                                SpecError::new(pp.clone(), format!("no free host port: {e}"))
                            })?,
                    };
                    next_port += 1;
                    forwards.push(PortForward {
                        name: p.name.clone(),
                        protocol: protocol.into(),
                        host_address: env.host_port_address.clone(),
                        host_port,
                        guest_port,
                    });
                }
                NetBackend::Masquerade {
                    network: MASQUERADE_NETWORK.into(),
                    gateway: MASQUERADE_GATEWAY.into(),
                    guest: MASQUERADE_GUEST.into(),
                    forwards,
                }
            } else if iface.bridge.is_some() {
                let bridge = match &net.multus {
                    Some(m) => env.bridges.get(&m.network_name).cloned().ok_or_else(|| {
                        SpecError::new(
                            format!("{ip}.bridge"),
                            format!(
                                "network {} has no Linux bridge on this node",
                                m.network_name
                            ),
                        )
                    })?,
                    None => env.pod_bridge.clone(),
                };
                NetBackend::Bridge {
                    tap: tap_name(&tap_seed, i),
                    bridge,
                }
            } else {
                return Err(SpecError::new(
                    ip,
                    "only masquerade and bridge bindings are supported",
                ));
            };
            let boot_order = iface.boot_order.filter(|n| *n > 0).map(|n| n as u32);
            nics.push(NicSpec {
                name: iface.name.clone(),
                model,
                mac: iface.mac_address.clone().filter(|m| !m.is_empty()),
                boot_order,
                backend,
            });
        }

        // Other devices.
        let serial_console = dev.autoattach_serial_console != Some(false);
        let vnc = match dev.autoattach_graphics_device {
            Some(true) if microvm => {
                return Err(SpecError::new(
                    "spec.domain.devices.autoattachGraphicsDevice",
                    "microvm has no graphics device",
                ))
            }
            None if microvm => false,
            v => v != Some(false),
        };
        let mut tablet = false;
        for (i, input) in dev.inputs.iter().flatten().enumerate() {
            if microvm {
                return Err(SpecError::new(
                    format!("spec.domain.devices.inputs[{i}]"),
                    "microvm has no USB",
                ));
            }
            if input.r#type != "tablet" || input.bus.as_deref().unwrap_or("usb") != "usb" {
                return Err(SpecError::new(
                    format!("spec.domain.devices.inputs[{i}]"),
                    "only a usb tablet is supported",
                ));
            }
            tablet = true;
        }
        let rng = dev.rng.is_some();
        let balloon =
            (dev.autoattach_mem_balloon != Some(false)).then_some(BALLOON_STATS_PERIOD_SECONDS);
        let watchdog = match &dev.watchdog {
            None => None,
            Some(w) => {
                let Some(esb) = &w.i6300esb else {
                    return Err(SpecError::new(
                        "spec.domain.devices.watchdog",
                        "only the i6300esb watchdog exists on x86_64",
                    ));
                };
                if microvm {
                    return Err(SpecError::new(
                        "spec.domain.devices.watchdog.i6300esb",
                        "microvm has no PCI bus for an i6300esb",
                    ));
                }
                Some(match esb.action.as_deref().unwrap_or("reset") {
                    "reset" => WatchdogAction::Reset,
                    "poweroff" => WatchdogAction::Poweroff,
                    "shutdown" => WatchdogAction::Shutdown,
                    a => {
                        return Err(SpecError::new(
                            "spec.domain.devices.watchdog.i6300esb.action",
                            format!("{a}: use reset, poweroff or shutdown"),
                        ))
                    }
                })
            }
        };
        let start_paused = match spec.start_strategy.as_deref() {
            None | Some("") => false,
            Some("Paused") => true,
            Some(s) => {
                return Err(SpecError::new(
                    "spec.startStrategy",
                    format!("{s}: only Paused is supported"),
                ))
            }
        };

        Ok(MachineSpec {
            vmi: format!("{namespace}/{name}"),
            uid: vmi.metadata.uid.clone(),
            profile,
            accelerator: env.accelerator,
            cpu,
            memory,
            firmware,
            uuid: fw.uuid.clone(),
            smbios_serial: fw.serial.clone(),
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

/// A tap name of at most 15 characters (IFNAMSIZ), stable for a VMI and interface index.
fn tap_name(seed: &str, index: usize) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("tap{h:08x}n{index}")
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
        assert_eq!(err.field, "spec.domain.cpu.model");
        let y3 = y2.replace("Nehalem", "Skylake-Client");
        assert_eq!(
            MachineSpec::from_vmi(&vmi(&y3), &env).unwrap().cpu.model,
            "Skylake-Client"
        );
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert!(tap_name("a-very-long-namespace/and-a-long-name", 12).len() <= 15);
    }
}
