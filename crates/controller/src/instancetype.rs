//! Instancetype and preference expansion: what KubeVirt's `pkg/instancetype` applies to a VMI
//! spec when a VM references a `VirtualMachine(Cluster)Instancetype` and/or
//! `VirtualMachine(Cluster)Preference`.
//!
//! Covered: CPU guest count (placed by the preference's `preferredCPUTopology`), CPU model,
//! dedicated CPU placement, guest memory and hugepages, node selector, scheduler name,
//! annotations; preference disk/cdrom bus, interface model, termination grace period. The
//! instancetype wins over the template (KubeVirt rejects a VM that sets both; the API server
//! does that validation), a preference only fills what the template left empty.
//! Not covered: ControllerRevisions (the VM always uses the current instancetype).

use kube::api::Api;
use kube::Client;
use kubevirt_api::{
    VirtualMachine, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    VirtualMachineInstanceSpec, VirtualMachineInstancetype, VirtualMachineInstancetypeSpec,
    VirtualMachinePreference, VirtualMachinePreferenceSpec, CPU,
};

use crate::Error;

/// Applies an instancetype's CPU and memory (and the rest listed above) to `spec`.
pub fn apply_instancetype(
    spec: &mut VirtualMachineInstanceSpec,
    it: &VirtualMachineInstancetypeSpec,
    pref: Option<&VirtualMachinePreferenceSpec>,
) {
    let topology = pref
        .and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology.as_deref())
        .unwrap_or("sockets");
    let ratio = pref
        .and_then(|p| p.prefer_spread_socket_to_core_ratio)
        .filter(|r| *r > 0)
        .unwrap_or(2);
    let (sockets, cores, threads) = topology_for(it.cpu.guest.max(1), topology, ratio);
    let cpu = spec.domain.cpu.get_or_insert_with(CPU::default);
    cpu.sockets = Some(sockets);
    cpu.cores = Some(cores);
    cpu.threads = Some(threads);
    if it.cpu.model.is_some() {
        cpu.model.clone_from(&it.cpu.model);
    }
    if it.cpu.dedicated_cpu_placement.is_some() {
        cpu.dedicated_cpu_placement = it.cpu.dedicated_cpu_placement;
    }
    if it.cpu.isolate_emulator_thread.is_some() {
        cpu.isolate_emulator_thread = it.cpu.isolate_emulator_thread;
    }
    if it.cpu.max_sockets.is_some() {
        cpu.max_sockets = it.cpu.max_sockets;
    }

    let memory = spec.domain.memory.get_or_insert_with(Default::default);
    memory.guest = Some(it.memory.guest.clone());
    if it.memory.hugepages.is_some() {
        memory.hugepages.clone_from(&it.memory.hugepages);
    }
    if it.memory.max_guest.is_some() {
        memory.max_guest.clone_from(&it.memory.max_guest);
    }

    if let Some(sel) = &it.node_selector {
        spec.node_selector
            .get_or_insert_with(Default::default)
            .extend(sel.clone());
    }
    if it.scheduler_name.is_some() {
        spec.scheduler_name.clone_from(&it.scheduler_name);
    }
}

/// `(sockets, cores, threads)` for `guest` vCPUs under a preferred topology. KubeVirt's
/// values: `sockets` (default), `cores`, `threads`, `spread` (sockets × `ratio` cores when
/// it divides), `any` (cores); the `prefer*` spellings are the deprecated v1alpha2 names.
pub fn topology_for(guest: i64, topology: &str, ratio: i64) -> (i64, i64, i64) {
    match topology {
        "cores" | "preferCores" | "any" | "preferAny" => (1, guest, 1),
        "threads" | "preferThreads" => (1, 1, guest),
        "spread" | "preferSpread" if guest % ratio == 0 && guest >= ratio => {
            (guest / ratio, ratio, 1)
        }
        _ => (guest, 1, 1),
    }
}

/// Fills what the template left empty from a preference.
pub fn apply_preference(
    spec: &mut VirtualMachineInstanceSpec,
    pref: &VirtualMachinePreferenceSpec,
) {
    if let Some(dev) = &pref.devices {
        for disk in spec.domain.devices.disks.iter_mut().flatten() {
            if let (Some(t), Some(bus)) = (disk.disk.as_mut(), &dev.preferred_disk_bus) {
                t.bus.get_or_insert_with(|| bus.clone());
            }
            if let (Some(t), Some(bus)) = (disk.cdrom.as_mut(), &dev.preferred_cdrom_bus) {
                t.bus.get_or_insert_with(|| bus.clone());
            }
        }
        if let Some(model) = &dev.preferred_interface_model {
            for iface in spec.domain.devices.interfaces.iter_mut().flatten() {
                iface.model.get_or_insert_with(|| model.clone());
            }
        }
        if spec.domain.devices.autoattach_graphics_device.is_none() {
            spec.domain.devices.autoattach_graphics_device =
                dev.preferred_autoattach_graphics_device;
        }
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = pref.preferred_termination_grace_period_seconds;
    }
}

/// The annotations an instancetype/preference asks for on the VMI (instancetype wins).
pub fn annotations(
    it: Option<&VirtualMachineInstancetypeSpec>,
    pref: Option<&VirtualMachinePreferenceSpec>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(a) = pref.and_then(|p| p.annotations.as_ref()) {
        out.extend(a.clone());
    }
    if let Some(a) = it.and_then(|i| i.annotations.as_ref()) {
        out.extend(a.clone());
    }
    out
}

/// Reads the instancetype and preference a VM references (namespaced or cluster-wide; the
/// cluster kinds are KubeVirt's default). Cluster specs have the same shape and are converted.
pub async fn fetch(
    client: &Client,
    vm: &VirtualMachine,
    namespace: &str,
) -> Result<
    (
        Option<VirtualMachineInstancetypeSpec>,
        Option<VirtualMachinePreferenceSpec>,
    ),
    Error,
> {
    let mut it = None;
    if let Some(m) = &vm.spec.instancetype {
        let name = m.name.clone().unwrap_or_default();
        let kind = m.kind.clone().unwrap_or_default().to_ascii_lowercase();
        let wrap = |source| Error::Instancetype {
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        it = Some(if kind == "virtualmachineinstancetype" {
            let api: Api<VirtualMachineInstancetype> = Api::namespaced(client.clone(), namespace);
            api.get(&name).await.map_err(wrap)?.spec
        } else {
            let api: Api<VirtualMachineClusterInstancetype> = Api::all(client.clone());
            convert(api.get(&name).await.map_err(wrap)?.spec)?
        });
    }
    let mut pref = None;
    if let Some(m) = &vm.spec.preference {
        let name = m.name.clone().unwrap_or_default();
        let kind = m.kind.clone().unwrap_or_default().to_ascii_lowercase();
        let wrap = |source| Error::Instancetype {
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        pref = Some(if kind == "virtualmachinepreference" {
            let api: Api<VirtualMachinePreference> = Api::namespaced(client.clone(), namespace);
            api.get(&name).await.map_err(wrap)?.spec
        } else {
            let api: Api<VirtualMachineClusterPreference> = Api::all(client.clone());
            convert(api.get(&name).await.map_err(wrap)?.spec)?
        });
    }
    Ok((it, pref))
}

fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(a: A) -> Result<B, Error> {
    Ok(serde_json::from_value(serde_json::to_value(a)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn it(guest: i64, mem: &str) -> VirtualMachineInstancetypeSpec {
        serde_json::from_value(json!({"cpu": {"guest": guest}, "memory": {"guest": mem}}))
            .expect("instancetype")
    }

    fn spec(v: serde_json::Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn cpu_and_memory_come_from_the_instancetype() {
        let mut s = spec(json!({"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}));
        apply_instancetype(&mut s, &it(4, "2Gi"), None);
        let cpu = s.domain.cpu.expect("cpu");
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(4), Some(1), Some(1))
        );
        assert_eq!(
            s.domain.memory.and_then(|m| m.guest).map(|q| q.0),
            Some("2Gi".to_string())
        );
    }

    #[test]
    fn preferred_topology_places_the_vcpus() {
        assert_eq!(topology_for(4, "sockets", 2), (4, 1, 1));
        assert_eq!(topology_for(4, "preferSockets", 2), (4, 1, 1));
        assert_eq!(topology_for(4, "cores", 2), (1, 4, 1));
        assert_eq!(topology_for(4, "threads", 2), (1, 1, 4));
        assert_eq!(topology_for(4, "spread", 2), (2, 2, 1));
        assert_eq!(topology_for(3, "spread", 2), (3, 1, 1));
        let pref: VirtualMachinePreferenceSpec =
            serde_json::from_value(json!({"cpu": {"preferredCPUTopology": "cores"}}))
                .expect("pref");
        let mut s = spec(json!({"domain": {"devices": {}}}));
        apply_instancetype(&mut s, &it(2, "1Gi"), Some(&pref));
        let cpu = s.domain.cpu.expect("cpu");
        assert_eq!((cpu.sockets, cpu.cores), (Some(1), Some(2)));
    }

    #[test]
    fn preference_fills_only_what_is_empty() {
        let pref: VirtualMachinePreferenceSpec = serde_json::from_value(json!({
            "devices": {"preferredDiskBus": "virtio", "preferredInterfaceModel": "e1000e",
                        "preferredCdromBus": "sata"},
            "preferredTerminationGracePeriodSeconds": 5
        }))
        .expect("pref");
        let mut s = spec(json!({"domain": {"devices": {
            "disks": [{"name": "a", "disk": {}}, {"name": "b", "disk": {"bus": "sata"}},
                      {"name": "c", "cdrom": {}}],
            "interfaces": [{"name": "default", "masquerade": {}},
                           {"name": "x", "bridge": {}, "model": "rtl8139"}]}}}));
        apply_preference(&mut s, &pref);
        let disks = s.domain.devices.disks.expect("disks");
        assert_eq!(
            disks[0].disk.as_ref().and_then(|d| d.bus.as_deref()),
            Some("virtio")
        );
        assert_eq!(
            disks[1].disk.as_ref().and_then(|d| d.bus.as_deref()),
            Some("sata")
        );
        assert_eq!(
            disks[2].cdrom.as_ref().and_then(|d| d.bus.as_deref()),
            Some("sata")
        );
        let ifs = s.domain.devices.interfaces.expect("interfaces");
        assert_eq!(ifs[0].model.as_deref(), Some("e1000e"));
        assert_eq!(ifs[1].model.as_deref(), Some("rtl8139"));
        assert_eq!(s.termination_grace_period_seconds, Some(5));
    }
}
