//! Instancetype and preference expansion: what KubeVirt's `pkg/instancetype` applies to a VMI
//! spec when a VM references a `VirtualMachine(Cluster)Instancetype` and/or
//! `VirtualMachine(Cluster)Preference`.
//!
//! Covered: CPU guest count (placed by the preference's `preferredCPUTopology`), CPU model,
//! dedicated CPU placement, guest memory and hugepages, node selector, scheduler name,
//! annotations; preference disk/cdrom bus, interface model, termination grace period. The
//! instancetype wins over the template (KubeVirt rejects a VM that sets both; the API server
//! does that validation), a preference only fills what the template left empty.
//!
//! Revisions, as KubeVirt's `pkg/instancetype/revision`: the first time the VM controller sees
//! a VM's instancetype (preference), it stores a copy in an `apps/v1` ControllerRevision owned
//! by the VM and records it in `status.instancetypeRef.controllerRevisionRef`
//! (`status.preferenceRef`). From then on the VM is sized from that copy, so editing or
//! deleting the instancetype does not change the VM; pointing `spec.instancetype` at another
//! name or kind takes a new copy, and `spec.instancetype.revisionName` picks a stored one.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use kubevirt_api::{
    ControllerRevisionRef, InstancetypeStatusRef, VirtualMachine,
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstanceSpec,
    VirtualMachineInstancetype, VirtualMachineInstancetypeSpec, VirtualMachinePreference,
    VirtualMachinePreferenceSpec, VirtualMachineStatus, CPU,
};
use serde_json::Value;

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

/// KubeVirt's labels on a revision: which object, at which generation, it copies.
pub const REVISION_GENERATION_LABEL: &str = "instancetype.kubevirt.io/object-generation";
pub const REVISION_KIND_LABEL: &str = "instancetype.kubevirt.io/object-kind";
pub const REVISION_NAME_LABEL: &str = "instancetype.kubevirt.io/object-name";
pub const REVISION_UID_LABEL: &str = "instancetype.kubevirt.io/object-uid";
pub const REVISION_VERSION_LABEL: &str = "instancetype.kubevirt.io/object-version";

/// Which of the two a matcher refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Instancetype,
    Preference,
}

/// A matcher as both kinds of matcher have it: name, namespaced or cluster kind, revision name.
struct Matcher {
    which: Which,
    name: String,
    revision: Option<String>,
    namespaced: bool,
}

impl Matcher {
    fn of(vm: &VirtualMachine, which: Which) -> Option<Matcher> {
        let (name, kind, revision) = match which {
            Which::Instancetype => {
                let m = vm.spec.instancetype.as_ref()?;
                (m.name.clone(), m.kind.clone(), m.revision_name.clone())
            }
            Which::Preference => {
                let m = vm.spec.preference.as_ref()?;
                (m.name.clone(), m.kind.clone(), m.revision_name.clone())
            }
        };
        let kind = kind.unwrap_or_default().to_ascii_lowercase();
        let namespaced = match which {
            Which::Instancetype => {
                matches!(
                    kind.as_str(),
                    "virtualmachineinstancetype" | "virtualmachineinstancetypes"
                )
            }
            Which::Preference => {
                matches!(
                    kind.as_str(),
                    "virtualmachinepreference" | "virtualmachinepreferences"
                )
            }
        };
        Some(Matcher {
            which,
            name: name.unwrap_or_default(),
            revision: revision.filter(|r| !r.is_empty()),
            namespaced,
        })
    }

    /// The kind as KubeVirt writes it in the status reference.
    fn kind_name(&self) -> &'static str {
        match (self.which, self.namespaced) {
            (Which::Instancetype, true) => "VirtualMachineInstancetype",
            (Which::Instancetype, false) => "VirtualMachineClusterInstancetype",
            (Which::Preference, true) => "VirtualMachinePreference",
            (Which::Preference, false) => "VirtualMachineClusterPreference",
        }
    }

    fn error(&self, source: kube::Error) -> Error {
        Error::Instancetype {
            kind: self.kind_name().to_ascii_lowercase(),
            name: self.name.clone(),
            source,
        }
    }

    /// The object itself, as stored (apiVersion and kind set).
    async fn read(&self, client: &Client, namespace: &str) -> Result<Value, Error> {
        let value = match (self.which, self.namespaced) {
            (Which::Instancetype, true) => {
                let api: Api<VirtualMachineInstancetype> =
                    Api::namespaced(client.clone(), namespace);
                with_type(api.get(&self.name).await.map_err(|e| self.error(e))?)?
            }
            (Which::Instancetype, false) => {
                let api: Api<VirtualMachineClusterInstancetype> = Api::all(client.clone());
                with_type(api.get(&self.name).await.map_err(|e| self.error(e))?)?
            }
            (Which::Preference, true) => {
                let api: Api<VirtualMachinePreference> = Api::namespaced(client.clone(), namespace);
                with_type(api.get(&self.name).await.map_err(|e| self.error(e))?)?
            }
            (Which::Preference, false) => {
                let api: Api<VirtualMachineClusterPreference> = Api::all(client.clone());
                with_type(api.get(&self.name).await.map_err(|e| self.error(e))?)?
            }
        };
        Ok(value)
    }
}

/// Where the status records the copy of an instancetype or a preference.
fn slot(status: &mut VirtualMachineStatus, which: Which) -> &mut Option<InstancetypeStatusRef> {
    match which {
        Which::Instancetype => &mut status.instancetype_ref,
        Which::Preference => &mut status.preference_ref,
    }
}

fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(obj: K) -> Result<Value, Error> {
    let mut v = serde_json::to_value(&obj)?;
    v["apiVersion"] = Value::String(K::api_version(&()).into_owned());
    v["kind"] = Value::String(K::kind(&()).into_owned());
    Ok(v)
}

/// The ControllerRevision KubeVirt stores for `object` (an instancetype or preference as
/// stored, apiVersion and kind set), owned by `vm`: name
/// `<vm>-<object>-<version>-<object uid>-<object generation>`, KubeVirt's labels, and the
/// object without labels, annotations, finalizers, owners and managedFields as data.
pub fn revision_for(vm: &VirtualMachine, mut object: Value) -> Result<ControllerRevision, Error> {
    let vm_name = vm
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let owner = vm
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let meta = &object["metadata"];
    let name = text(&meta["name"]);
    let uid = text(&meta["uid"]);
    let generation = meta["generation"].as_i64().unwrap_or(0);
    let api_version = text(&object["apiVersion"]);
    let version = api_version
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let kind = text(&object["kind"]);
    if let Some(m) = object["metadata"].as_object_mut() {
        for k in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    let labels = [
        (REVISION_GENERATION_LABEL, generation.to_string()),
        (REVISION_KIND_LABEL, kind),
        (REVISION_NAME_LABEL, name.clone()),
        (REVISION_UID_LABEL, uid.clone()),
        (REVISION_VERSION_LABEL, version.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{vm_name}-{name}-{version}-{uid}-{generation}")),
            namespace: vm.metadata.namespace.clone(),
            owner_references: Some(vec![owner]),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(RawExtension(object)),
        revision: 0,
    })
}

/// Stores the revisions of the VM's instancetype and preference that it does not have yet and
/// records them in `status` (which the caller writes), as KubeVirt's revision handler does.
/// A changed name or kind drops the old reference; `revisionName` in the matcher wins.
pub async fn sync_revisions(
    client: &Client,
    vm: &VirtualMachine,
    namespace: &str,
    status: &mut VirtualMachineStatus,
) -> Result<(), Error> {
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = Matcher::of(vm, which) else {
            *slot(status, which) = None;
            continue;
        };
        let mut r = slot(status, which).clone().unwrap_or_default();
        if r.name.as_deref() != Some(m.name.as_str()) || r.kind.as_deref() != Some(m.kind_name()) {
            r.name = Some(m.name.clone());
            r.kind = Some(m.kind_name().to_string());
            r.controller_revision_ref = None;
        }
        if let Some(rev) = &m.revision {
            r.controller_revision_ref = Some(ControllerRevisionRef {
                name: Some(rev.clone()),
            });
        }
        if r.controller_revision_ref
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .unwrap_or_default()
            .is_empty()
        {
            let object = m.read(client, namespace).await?;
            let stored = store_revision(client, namespace, revision_for(vm, object)?).await?;
            tracing::info!(
                namespace,
                vm = vm.metadata.name.as_deref().unwrap_or_default(),
                revision = stored.as_str(),
                "stored the {} of the VM",
                m.kind_name()
            );
            r.controller_revision_ref = Some(ControllerRevisionRef { name: Some(stored) });
        }
        *slot(status, which) = Some(r);
    }
    Ok(())
}

/// Creates the revision; one that exists already must hold the same data (KubeVirt's check).
async fn store_revision(
    client: &Client,
    namespace: &str,
    rev: ControllerRevision,
) -> Result<String, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let name = rev.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &rev).await {
        Ok(_) => Ok(name),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await?;
            let spec = |r: &ControllerRevision| r.data.as_ref().map(|d| d.0["spec"].clone());
            if spec(&existing) == spec(&rev) {
                Ok(name)
            } else {
                Err(Error::Revision(format!(
                    "found existing ControllerRevision with unexpected data: {name}"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The instancetype and preference a VM is sized from: the copies its status refers to
/// (see [`sync_revisions`]), or the objects themselves when no copy is recorded.
pub async fn fetch(
    client: &Client,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    namespace: &str,
) -> Result<
    (
        Option<VirtualMachineInstancetypeSpec>,
        Option<VirtualMachinePreferenceSpec>,
    ),
    Error,
> {
    let mut it = None;
    let mut pref = None;
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = Matcher::of(vm, which) else {
            continue;
        };
        let recorded = match which {
            Which::Instancetype => &status.instancetype_ref,
            Which::Preference => &status.preference_ref,
        }
        .as_ref()
        .and_then(|r| r.controller_revision_ref.as_ref())
        .and_then(|c| c.name.clone())
        .filter(|n| !n.is_empty());
        let object = match recorded {
            Some(rev) => {
                let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
                let stored = api.get(&rev).await.map_err(|e| m.error(e))?;
                stored.data.map(|d| d.0).ok_or_else(|| {
                    Error::Revision(format!("ControllerRevision {rev} has no data"))
                })?
            }
            None => m.read(client, namespace).await?,
        };
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        match which {
            Which::Instancetype => it = Some(serde_json::from_value(spec)?),
            Which::Preference => pref = Some(serde_json::from_value(spec)?),
        }
    }
    Ok((it, pref))
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
