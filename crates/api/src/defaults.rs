//! Defaulting: what KubeVirt's mutating webhook and API defaults fill in, as pure functions.
//!
//! The order follows KubeVirt's `SetDefaultVirtualMachineInstanceSpec` (pkg/defaults):
//! architecture, machine type, resource requests, guest memory, CPU topology, default network
//! and interface, volume → disk, then the per-device API defaults (disk bus, cdrom tray...).

use crate::arch::Arch;
use crate::quantity::Quantity;
use crate::{
    CDRomTarget, DataVolume, Devices, Disk, DiskTarget, DomainSpec, FeatureState, Firmware,
    Interface, InterfaceBridge, InterfaceMasquerade, Machine, Network, PodNetwork, VirtualMachine,
    VirtualMachineInstance, VirtualMachineInstanceSpec, CPU,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// KubeVirt's `DefaultGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
/// KubeVirt's default machine type on amd64 (`DefaultAMD64MachineType`).
pub const DEFAULT_MACHINE_TYPE: &str = "q35";
/// The namespace KubeVirt's VM controller uses for stable firmware UUIDs (`magicUUID`).
pub const FIRMWARE_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a1a24a1_4061_4607_8bf4_a3963d0c5895);

/// The binding the default pod interface gets (KubeVirt: `network.defaultNetworkInterface`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DefaultBinding {
    Bridge,
    Masquerade,
}

/// The parts of the cluster configuration (the `KubeVirt` resource) that defaulting reads.
/// Serialisable: virt-handler hands the current value to each launcher
/// (`kubevirt_launcher::api::VmiDir::write_defaults`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultsConfig {
    /// KubeVirt's out-of-the-box default is bridge; the single-node server configures masquerade.
    pub default_network_interface: DefaultBinding,
    /// `spec.configuration.machineType`, if the cluster overrides it.
    pub machine_type: Option<String>,
    pub architecture: String,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            default_network_interface: DefaultBinding::Bridge,
            machine_type: None,
            architecture: "amd64".into(),
        }
    }
}

/// The stable firmware UUID KubeVirt derives from a VM's name (`CalculateLegacyUUID`).
pub fn firmware_uuid(name: &str) -> String {
    uuid::Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, name.as_bytes()).to_string()
}

pub fn default_vmi(vmi: &mut VirtualMachineInstance, cfg: &DefaultsConfig) {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    default_vmi_spec(&mut vmi.spec, &name, cfg);
}

/// A VM is defaulted lightly, as KubeVirt's VM mutator does: the template keeps what the user
/// wrote (it is defaulted in full when the controller creates the VMI), but gets its machine
/// type, architecture and a stable firmware UUID; instancetype/preference matchers get a kind.
/// KubeVirt's migration-create mutator (on create only: the update admitter then keeps the label
/// from changing while the migration runs): every migration carries its VMI's name in the
/// `kubevirt.io/vmi-name` label, so `virtctl migrate-cancel` and the controllers find it by
/// label. (KubeVirt also adds its `kubevirt.io/migrationJobFinalize` finalizer; here the
/// migration controller adds it when it takes the migration, so a migration is never left
/// undeletable by a server that runs no migration controller.)
pub fn label_migration(m: &mut crate::VirtualMachineInstanceMigration) {
    let vmi = m.spec.vmi_name.clone().unwrap_or_default();
    m.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(crate::admitters::migration::SELECTOR_LABEL.into(), vmi);
}

pub fn default_vm(vm: &mut VirtualMachine, cfg: &DefaultsConfig) {
    let name = vm.metadata.name.clone().unwrap_or_default();
    if let Some(spec) = vm.spec.template.spec.as_mut() {
        if spec.architecture.as_deref().unwrap_or("").is_empty() {
            spec.architecture = Some(cfg.architecture.clone());
        }
        default_machine_type(&mut spec.domain, spec.architecture.as_deref(), cfg);
        let fw = spec.domain.firmware.get_or_insert_with(Firmware::default);
        if fw.uuid.as_deref().unwrap_or("").is_empty() {
            fw.uuid = Some(firmware_uuid(&name));
        }
    }
    if let Some(it) = vm.spec.instancetype.as_mut() {
        if it.kind.as_deref().unwrap_or("").is_empty() {
            it.kind = Some("virtualmachineclusterinstancetype".into());
        }
    }
    if let Some(p) = vm.spec.preference.as_mut() {
        if p.kind.as_deref().unwrap_or("").is_empty() {
            p.kind = Some("virtualmachineclusterpreference".into());
        }
    }
}

/// DataVolumes are stored as written (CDI's webhook does not default them).
pub fn default_dv(_dv: &mut DataVolume, _cfg: &DefaultsConfig) {}

/// The machine type for the spec's architecture: on amd64 the cluster's override, else q35; on
/// arm64 `virt` (the cluster's `machineType` here is amd64's, from
/// `architectureConfiguration.amd64`). An unknown architecture gets none: admission refuses it.
fn default_machine_type(domain: &mut DomainSpec, arch: Option<&str>, cfg: &DefaultsConfig) {
    let machine_type = match arch.and_then(Arch::parse) {
        Some(Arch::Amd64) => cfg
            .machine_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string()),
        Some(a) => a.default_machine_type().to_string(),
        None => return,
    };
    let machine = domain.machine.get_or_insert_with(Machine::default);
    if machine.r#type.as_deref().unwrap_or("").is_empty() {
        machine.r#type = Some(machine_type);
    }
}

fn quantity(
    map: Option<&std::collections::BTreeMap<String, K8sQuantity>>,
    key: &str,
) -> Option<Quantity> {
    map.and_then(|m| m.get(key))
        .and_then(|q| Quantity::from_k8s(q).ok())
        .filter(|q| !q.is_zero())
}

/// The whole VMI spec pipeline. `name` seeds the firmware UUID.
pub fn default_vmi_spec(spec: &mut VirtualMachineInstanceSpec, name: &str, cfg: &DefaultsConfig) {
    if spec.architecture.as_deref().unwrap_or("").is_empty() {
        spec.architecture = Some(cfg.architecture.clone());
    }
    default_machine_type(&mut spec.domain, spec.architecture.as_deref(), cfg);

    // Resource requests: a CPU limit without a request implies the request.
    if let Some(res) = spec.domain.resources.as_mut() {
        let cpu_limit = res.limits.as_ref().and_then(|l| l.get("cpu")).cloned();
        if let Some(limit) = cpu_limit {
            let requests = res.requests.get_or_insert_with(Default::default);
            requests.entry("cpu".into()).or_insert(limit);
        }
    }

    // Guest memory: requests, then limits, then the hugepage size.
    let requests = spec
        .domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    let limits = spec
        .domain
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref());
    let has_guest = spec
        .domain
        .memory
        .as_ref()
        .is_some_and(|m| m.guest.is_some());
    if !has_guest {
        let from = requests
            .and_then(|r| r.get("memory"))
            .filter(|q| Quantity::from_k8s(q).is_ok_and(|q| !q.is_zero()))
            .or_else(|| {
                limits
                    .and_then(|l| l.get("memory"))
                    .filter(|q| Quantity::from_k8s(q).is_ok_and(|q| !q.is_zero()))
            })
            .cloned()
            .or_else(|| {
                spec.domain
                    .memory
                    .as_ref()
                    .and_then(|m| m.hugepages.as_ref())
                    .and_then(|h| h.page_size.clone())
                    .map(K8sQuantity)
            });
        if let Some(q) = from {
            spec.domain
                .memory
                .get_or_insert_with(Default::default)
                .guest = Some(q);
        }
    }

    // CPU topology: everything in sockets, from the limit, else the request, else 1.
    let cpu_unset = spec.domain.cpu.as_ref().is_none_or(|c| {
        c.cores.unwrap_or(0) == 0 && c.sockets.unwrap_or(0) == 0 && c.threads.unwrap_or(0) == 0
    });
    if cpu_unset {
        let sockets = quantity(limits, "cpu")
            .or_else(|| quantity(requests, "cpu"))
            .map(|q| q.value().max(1) as i64)
            .unwrap_or(1);
        let cpu = spec.domain.cpu.get_or_insert_with(CPU::default);
        cpu.cores = Some(1);
        cpu.threads = Some(1);
        cpu.sockets = Some(sockets);
    }

    default_network_interface(spec, cfg);
    default_volume_disks(spec);
    let arch = spec.architecture.as_deref().and_then(Arch::parse);
    default_devices(&mut spec.domain.devices, arch);
    // KubeVirt's `setDefaultFeatures` turns ACPI off on s390x before a present feature
    // without `enabled` would be read as on.
    if arch == Some(Arch::S390x) {
        crate::arch::set_s390x_defaults(spec);
    }
    default_features(&mut spec.domain);
    // KubeVirt's `setDefaultCPUArch`, after the spec defaults.
    if arch == Some(Arch::Arm64) {
        crate::arch::set_arm64_defaults(spec);
    }

    let fw = spec.domain.firmware.get_or_insert_with(Firmware::default);
    if fw.uuid.as_deref().unwrap_or("").is_empty() {
        fw.uuid = Some(firmware_uuid(name));
    }
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
}

fn default_network_interface(spec: &mut VirtualMachineInstanceSpec, cfg: &DefaultsConfig) {
    let devices = &mut spec.domain.devices;
    if devices.autoattach_pod_interface == Some(false) {
        return;
    }
    let no_networks = spec.networks.as_ref().is_none_or(Vec::is_empty);
    let no_interfaces = devices.interfaces.as_ref().is_none_or(Vec::is_empty);
    if !(no_networks && no_interfaces) {
        return;
    }
    spec.networks = Some(vec![Network {
        name: "default".into(),
        pod: Some(PodNetwork::default()),
        ..Default::default()
    }]);
    let mut iface = Interface {
        name: "default".into(),
        ..Default::default()
    };
    match cfg.default_network_interface {
        DefaultBinding::Bridge => iface.bridge = Some(InterfaceBridge::default()),
        DefaultBinding::Masquerade => iface.masquerade = Some(InterfaceMasquerade::default()),
    }
    devices.interfaces = Some(vec![iface]);
}

/// Every volume that no disk or filesystem uses gets a disk of the same name.
fn default_volume_disks(spec: &mut VirtualMachineInstanceSpec) {
    let Some(volumes) = spec.volumes.as_ref() else {
        return;
    };
    let devices = &mut spec.domain.devices;
    let used: std::collections::BTreeSet<String> = devices
        .disks
        .iter()
        .flatten()
        .map(|d| d.name.clone())
        .chain(devices.filesystems.iter().flatten().map(|f| f.name.clone()))
        .collect();
    let missing: Vec<Disk> = volumes
        .iter()
        .filter(|v| !used.contains(&v.name) && v.memory_dump.is_none())
        .map(|v| Disk {
            name: v.name.clone(),
            ..Default::default()
        })
        .collect();
    if !missing.is_empty() {
        devices.disks.get_or_insert_with(Vec::new).extend(missing);
    }
}

fn default_devices(devices: &mut Devices, arch: Option<Arch>) {
    // sata on amd64 (works without guest drivers); virtio on arm64 and s390x where QEMU has
    // no sata.
    let bus = if matches!(arch, Some(Arch::Arm64 | Arch::S390x)) {
        "virtio"
    } else {
        "sata"
    };
    for disk in devices.disks.iter_mut().flatten() {
        if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
            disk.disk = Some(DiskTarget::default());
        }
        if let Some(t) = disk.disk.as_mut() {
            if t.bus.as_deref().unwrap_or("").is_empty() {
                t.bus = Some(bus.into());
            }
        }
        if let Some(t) = disk.lun.as_mut() {
            if t.bus.as_deref().unwrap_or("").is_empty() {
                t.bus = Some(bus.into());
            }
        }
        if let Some(t) = disk.cdrom.as_mut() {
            default_cdrom(t, bus);
        }
    }
    for input in devices.inputs.iter_mut().flatten() {
        if input.bus.as_deref().unwrap_or("").is_empty() {
            input.bus = Some("usb".into());
        }
        if input.r#type.is_empty() {
            input.r#type = "tablet".into();
        }
    }
    if let Some(wd) = devices.watchdog.as_mut() {
        if let Some(esb) = wd.i6300esb.as_mut() {
            esb.action.get_or_insert_with(|| "reset".into());
        }
    }
}

fn default_cdrom(t: &mut CDRomTarget, bus: &str) {
    if t.bus.as_deref().unwrap_or("").is_empty() {
        t.bus = Some(bus.into());
    }
    t.readonly.get_or_insert(true);
    t.tray.get_or_insert_with(|| "closed".into());
}

/// A feature that is present without `enabled` is on (KubeVirt's `SetDefaults_FeatureState`).
fn default_features(domain: &mut DomainSpec) {
    let Some(f) = domain.features.as_mut() else {
        return;
    };
    let on = |s: &mut Option<FeatureState>| {
        if let Some(s) = s.as_mut() {
            s.enabled.get_or_insert(true);
        }
    };
    on(&mut f.acpi);
    on(&mut f.smm);
    on(&mut f.pvspinlock);
    if let Some(apic) = f.apic.as_mut() {
        apic.enabled.get_or_insert(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Memory, ResourceRequirements, Volume};

    fn q(s: &str) -> K8sQuantity {
        K8sQuantity(s.into())
    }

    fn spec() -> VirtualMachineInstanceSpec {
        VirtualMachineInstanceSpec::default()
    }

    #[test]
    fn disk_bus_defaults_to_sata_on_amd64_and_virtio_on_arm64() {
        let mut s = spec();
        s.domain.devices.disks = Some(vec![Disk {
            name: "d".into(),
            ..Default::default()
        }]);
        let mut arm = s.clone();
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        let disk = &s.domain.devices.disks.as_ref().unwrap()[0];
        assert_eq!(disk.disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
        let cfg = DefaultsConfig {
            architecture: "arm64".into(),
            ..Default::default()
        };
        default_vmi_spec(&mut arm, "x", &cfg);
        let disk = &arm.domain.devices.disks.as_ref().unwrap()[0];
        assert_eq!(disk.disk.as_ref().unwrap().bus.as_deref(), Some("virtio"));
    }

    #[test]
    fn a_volume_without_a_disk_gets_one() {
        let mut s = spec();
        s.volumes = Some(vec![Volume {
            name: "cloudinit".into(),
            ..Default::default()
        }]);
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        let disks = s.domain.devices.disks.unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "cloudinit");
        assert!(disks[0].disk.is_some());
    }

    #[test]
    fn cpu_topology_comes_from_the_limit_then_the_request() {
        let mut s = spec();
        s.domain.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), q("2"))].into()),
            limits: Some([("cpu".to_string(), q("3500m"))].into()),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        let cpu = s.domain.cpu.unwrap();
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(4), Some(1), Some(1))
        );

        let mut s = spec();
        s.domain.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), q("2"))].into()),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert_eq!(s.domain.cpu.unwrap().sockets, Some(2));

        let mut s = spec();
        s.domain.cpu = Some(CPU {
            cores: Some(2),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert_eq!(
            s.domain.cpu.unwrap().sockets,
            None,
            "explicit topology is kept"
        );
    }

    #[test]
    fn guest_memory_comes_from_requests_then_limits() {
        let mut s = spec();
        s.domain.resources = Some(ResourceRequirements {
            requests: Some([("memory".to_string(), q("128Mi"))].into()),
            limits: Some([("memory".to_string(), q("256Mi"))].into()),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert_eq!(s.domain.memory.unwrap().guest, Some(q("128Mi")));

        let mut s = spec();
        s.domain.resources = Some(ResourceRequirements {
            limits: Some([("memory".to_string(), q("256Mi"))].into()),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert_eq!(s.domain.memory.unwrap().guest, Some(q("256Mi")));

        let mut s = spec();
        s.domain.memory = Some(Memory {
            guest: Some(q("64Mi")),
            ..Default::default()
        });
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert_eq!(s.domain.memory.unwrap().guest, Some(q("64Mi")));
    }

    #[test]
    fn machine_uuid_grace_period_and_default_network() {
        let mut s = spec();
        default_vmi_spec(&mut s, "testvm", &DefaultsConfig::default());
        assert_eq!(s.domain.machine.unwrap().r#type.as_deref(), Some("q35"));
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        let uuid = s.domain.firmware.unwrap().uuid.unwrap();
        assert_eq!(uuid, firmware_uuid("testvm"));
        assert_ne!(uuid, firmware_uuid("othervm"));
        let nets = s.networks.unwrap();
        assert_eq!(nets[0].name, "default");
        assert!(nets[0].pod.is_some());
        let ifaces = s.domain.devices.interfaces.unwrap();
        assert_eq!(ifaces[0].name, "default");
        assert!(
            ifaces[0].bridge.is_some(),
            "KubeVirt's default binding is bridge"
        );

        let mut s = spec();
        let cfg = DefaultsConfig {
            default_network_interface: DefaultBinding::Masquerade,
            ..Default::default()
        };
        default_vmi_spec(&mut s, "testvm", &cfg);
        assert!(s.domain.devices.interfaces.unwrap()[0].masquerade.is_some());
    }

    #[test]
    fn no_default_network_when_autoattach_is_off_or_one_is_given() {
        let mut s = spec();
        s.domain.devices.autoattach_pod_interface = Some(false);
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert!(s.networks.is_none());

        let mut s = spec();
        s.networks = Some(vec![Network {
            name: "n".into(),
            pod: Some(PodNetwork::default()),
            ..Default::default()
        }]);
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        assert!(s.domain.devices.interfaces.is_none());
    }

    #[test]
    fn cdrom_is_readonly_with_a_closed_tray() {
        let mut s = spec();
        s.domain.devices.disks = Some(vec![Disk {
            name: "cd".into(),
            cdrom: Some(CDRomTarget::default()),
            ..Default::default()
        }]);
        default_vmi_spec(&mut s, "x", &DefaultsConfig::default());
        let cd = s.domain.devices.disks.unwrap()[0].cdrom.clone().unwrap();
        assert_eq!(cd.readonly, Some(true));
        assert_eq!(cd.tray.as_deref(), Some("closed"));
        assert_eq!(cd.bus.as_deref(), Some("sata"));
    }
}
