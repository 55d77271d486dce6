//! Instancetypes and preferences applied to a VMI spec: KubeVirt's `pkg/instancetype/apply`,
//! `preference/apply`, `conflict`, `preference/requirements` and the spread check of
//! `preference/validation`, as pure functions.
//!
//! Admission applies them to a copy of a VM's template before it validates it (and refuses a
//! VM whose template sets what its instancetype provides); virt-controller applies them when it
//! makes the VMI. Both go through [`apply`], so what admission accepted is what the VMI gets.
//!
//! Finding the objects ([`find`]) goes through [`crate::admission::Lookup`]: the VM's
//! `revisionName`, else the ControllerRevision its status records (when it copies the named
//! object), else the object itself, as KubeVirt's `find.SpecFinder` does.

use crate::admission::Lookup;
use crate::field::{CauseType, FieldError, Path};
use crate::quantity::Quantity;
use crate::{
    VirtualMachine, VirtualMachineInstanceSpec, VirtualMachineInstancetypeSpec,
    VirtualMachinePreferenceSpec, CPU,
};
use std::collections::BTreeMap;
use std::fmt;

/// KubeVirt's labels on a revision: which object, at which generation, it copies.
pub const REVISION_GENERATION_LABEL: &str = "instancetype.kubevirt.io/object-generation";
pub const REVISION_KIND_LABEL: &str = "instancetype.kubevirt.io/object-kind";
pub const REVISION_NAME_LABEL: &str = "instancetype.kubevirt.io/object-name";
pub const REVISION_UID_LABEL: &str = "instancetype.kubevirt.io/object-uid";
pub const REVISION_VERSION_LABEL: &str = "instancetype.kubevirt.io/object-version";

/// The API group of instancetypes and preferences.
pub const GROUP: &str = "instancetype.kubevirt.io";

/// A VM field its instancetype also sets (KubeVirt's `conflict.Conflict`), or a check of the
/// instancetype against the preference that failed (then with its own message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub message: Option<String>,
}

impl Conflict {
    fn at(path: Path) -> Conflict {
        Conflict {
            path: path.into(),
            message: None,
        }
    }

    /// As KubeVirt reports it: `FieldValueInvalid` at the conflicting field.
    pub fn to_field_error(&self) -> FieldError {
        FieldError::invalid(self.path.clone(), self.to_string())
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(
                f,
                "VM field(s) {} conflicts with selected instance type",
                self.path
            ),
        }
    }
}

/// The conflicts [`apply`] found; nothing was applied when there are any.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("VM field(s) {} conflicts with selected instance type", paths(.0))]
pub struct Conflicts(pub Vec<Conflict>);

fn paths(c: &[Conflict]) -> String {
    c.iter()
        .map(|c| c.path.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Conflicts {
    pub fn to_field_errors(&self) -> Vec<FieldError> {
        self.0.iter().map(Conflict::to_field_error).collect()
    }
}

/// KubeVirt's `ApplyToVMI`: the instancetype's fields onto `spec` (each one the template also
/// sets is a conflict, and then nothing is applied), its annotations onto `annotations`, then
/// the preference, which only fills what is still unset. `base` is where `spec` lives
/// (`spec.template.spec` for a VM), for the conflicts' paths.
pub fn apply(
    base: &Path,
    it: Option<&VirtualMachineInstancetypeSpec>,
    pref: Option<&VirtualMachinePreferenceSpec>,
    spec: &mut VirtualMachineInstanceSpec,
    annotations: &mut BTreeMap<String, String>,
) -> Result<(), Conflicts> {
    if let Some(it) = it {
        let mut c = Vec::new();
        apply_node_selector(base, it, spec, &mut c);
        apply_scheduler_name(base, it, spec, &mut c);
        apply_cpu(base, it, pref, spec, &mut c);
        apply_memory(base, it, spec, &mut c);
        apply_io_threads(base, it, spec, &mut c);
        apply_simple(base, it, spec, &mut c);
        for (k, v) in it.annotations.iter().flatten() {
            match annotations.get(k) {
                Some(existing) if existing != v => {
                    c.push(Conflict::at(Path::root("annotations").child(k)))
                }
                Some(_) => {}
                None => {
                    annotations.insert(k.clone(), v.clone());
                }
            }
        }
        if !c.is_empty() {
            return Err(Conflicts(c));
        }
    }
    if let Some(pref) = pref {
        apply_preference(pref, spec, annotations);
    }
    Ok(())
}

fn has(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> bool {
    map.is_some_and(|m| m.contains_key(key))
}

fn apply_node_selector(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let Some(sel) = &it.node_selector else {
        return;
    };
    if spec.node_selector.is_some() {
        c.push(Conflict::at(base.child("nodeSelector")));
    } else {
        spec.node_selector = Some(sel.clone());
    }
}

fn apply_scheduler_name(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let Some(name) = it.scheduler_name.as_ref().filter(|n| !n.is_empty()) else {
        return;
    };
    if spec
        .scheduler_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        c.push(Conflict::at(base.child("schedulerName")));
    } else {
        spec.scheduler_name = Some(name.clone());
    }
}

fn apply_cpu(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    pref: Option<&VirtualMachinePreferenceSpec>,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let domain = base.child("domain");
    let resources = spec.domain.resources.as_ref();
    let mut found = Vec::new();
    if has(resources.and_then(|r| r.requests.as_ref()), "cpu") {
        found.push(Conflict::at(
            domain.child("resources").child("requests").child("cpu"),
        ));
    }
    if has(resources.and_then(|r| r.limits.as_ref()), "cpu") {
        found.push(Conflict::at(
            domain.child("resources").child("limits").child("cpu"),
        ));
    }
    let cpu = spec.domain.cpu.get_or_insert_with(CPU::default);
    let p = domain.child("cpu");
    let set = |v: Option<i64>| v.unwrap_or(0) != 0;
    for (name, taken) in [
        ("sockets", set(cpu.sockets)),
        ("cores", set(cpu.cores)),
        ("threads", set(cpu.threads)),
        (
            "model",
            cpu.model.as_deref().is_some_and(|m| !m.is_empty()) && it.cpu.model.is_some(),
        ),
        (
            "dedicatedCPUPlacement",
            cpu.dedicated_cpu_placement == Some(true) && it.cpu.dedicated_cpu_placement.is_some(),
        ),
        (
            "isolateEmulatorThread",
            cpu.isolate_emulator_thread == Some(true) && it.cpu.isolate_emulator_thread.is_some(),
        ),
        ("numa", cpu.numa.is_some() && it.cpu.numa.is_some()),
        (
            "realtime",
            cpu.realtime.is_some() && it.cpu.realtime.is_some(),
        ),
    ] {
        if taken {
            found.push(Conflict::at(p.child(name)));
        }
    }
    if !found.is_empty() {
        c.extend(found);
        return;
    }
    if it.cpu.model.is_some() {
        cpu.model.clone_from(&it.cpu.model);
    }
    if it.cpu.dedicated_cpu_placement.is_some() {
        cpu.dedicated_cpu_placement = it.cpu.dedicated_cpu_placement;
    }
    if it.cpu.isolate_emulator_thread.is_some() {
        cpu.isolate_emulator_thread = it.cpu.isolate_emulator_thread;
    }
    if it.cpu.numa.is_some() {
        cpu.numa.clone_from(&it.cpu.numa);
    }
    if it.cpu.realtime.is_some() {
        cpu.realtime.clone_from(&it.cpu.realtime);
    }
    if it.cpu.max_sockets.is_some() {
        cpu.max_sockets = it.cpu.max_sockets;
    }
    let (sockets, cores, threads) = guest_topology(it.cpu.guest, pref);
    cpu.sockets = Some(sockets);
    cpu.cores = Some(cores);
    cpu.threads = Some(threads);
}

/// The preferred topology's name (`preferSockets` etc. are v1alpha2's spellings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Sockets,
    Cores,
    Threads,
    Spread,
    Any,
    /// A value KubeVirt does not know (the preference admitter refuses it).
    Unknown,
}

/// KubeVirt's `GetPreferredTopology` (default: sockets).
pub fn preferred_topology(pref: Option<&VirtualMachinePreferenceSpec>) -> Topology {
    match pref
        .and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology.as_deref())
    {
        None | Some("sockets") | Some("preferSockets") => Topology::Sockets,
        Some("cores") | Some("preferCores") => Topology::Cores,
        Some("threads") | Some("preferThreads") => Topology::Threads,
        Some("spread") | Some("preferSpread") => Topology::Spread,
        Some("any") | Some("preferAny") => Topology::Any,
        Some(_) => Topology::Unknown,
    }
}

/// What a spread topology spreads the vCPUs across.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Across {
    SocketsCores,
    CoresThreads,
    SocketsCoresThreads,
}

impl fmt::Display for Across {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Across::SocketsCores => "SocketsCores",
            Across::CoresThreads => "CoresThreads",
            Across::SocketsCoresThreads => "SocketsCoresThreads",
        })
    }
}

/// KubeVirt's `GetSpreadOptions`: the ratio (default 2) and what to spread across (default
/// sockets and cores).
pub fn spread_options(pref: Option<&VirtualMachinePreferenceSpec>) -> (i64, Across) {
    let mut ratio = pref
        .and_then(|p| p.prefer_spread_socket_to_core_ratio)
        .filter(|r| *r != 0)
        .unwrap_or(2);
    let mut across = Across::SocketsCores;
    if let Some(o) = pref
        .and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.spread_options.as_ref())
    {
        match o.across.as_deref() {
            Some("CoresThreads") => across = Across::CoresThreads,
            Some("SocketsCoresThreads") => across = Across::SocketsCoresThreads,
            _ => {}
        }
        if let Some(r) = o.ratio {
            ratio = r;
        }
    }
    (ratio, across)
}

/// `(sockets, cores, threads)` for `guest` vCPUs under the preference's topology
/// (`applyGuestCPUTopology`). A spread whose ratio does not divide the count is refused
/// before this by [`check_spread`]; here a zero or negative ratio leaves 1 vCPU per socket.
pub fn guest_topology(guest: i64, pref: Option<&VirtualMachinePreferenceSpec>) -> (i64, i64, i64) {
    if guest <= 1 {
        return (1, 1, 1);
    }
    match preferred_topology(pref) {
        Topology::Cores => (1, guest, 1),
        Topology::Threads => (1, 1, guest),
        Topology::Sockets | Topology::Any => (guest, 1, 1),
        Topology::Spread => {
            let (ratio, across) = spread_options(pref);
            if ratio <= 0 {
                return (guest, 1, 1);
            }
            match across {
                Across::SocketsCores => (guest / ratio, ratio, 1),
                Across::CoresThreads => (1, guest / ratio, ratio),
                Across::SocketsCoresThreads => (guest / 2 / ratio, ratio, 2),
            }
        }
        Topology::Unknown => (1, 1, 1),
    }
}

/// KubeVirt's `CheckSpreadCPUTopology`: a spread preference needs an instancetype whose vCPUs
/// its ratio divides.
pub fn check_spread(
    it: Option<&VirtualMachineInstancetypeSpec>,
    pref: Option<&VirtualMachinePreferenceSpec>,
) -> Option<Conflict> {
    let it = it?;
    if preferred_topology(pref) != Topology::Spread {
        return None;
    }
    let guest = it.cpu.guest;
    let (ratio, across) = spread_options(pref);
    let divides = |n: i64| ratio > 0 && n % ratio == 0;
    let message = match across {
        Across::SocketsCores if !divides(guest) => format!(
            "{guest} vCPUs provided by the instance type are not divisible by the \
             Spec.PreferSpreadSocketToCoreRatio or Spec.CPU.PreferSpreadOptions.Ratio of {ratio} provided by the preference"
        ),
        Across::CoresThreads if !divides(guest) => format!(
            "{guest} vCPUs provided by the instance type are not divisible by the number of threads per core {ratio}"
        ),
        Across::SocketsCoresThreads if guest % 2 != 0 || !divides(guest / 2) => format!(
            "{guest} vCPUs provided by the instance type are not divisible by the number of threads per core \
             2 and Spec.PreferSpreadSocketToCoreRatio or Spec.CPU.PreferSpreadOptions.Ratio of {ratio}"
        ),
        _ => return None,
    };
    Some(Conflict {
        path: "instancetype.spec.cpu.guest".into(),
        message: Some(message),
    })
}

fn apply_memory(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let domain = base.child("domain");
    let memory = spec.domain.memory.get_or_insert_with(Default::default);
    let resources = spec.domain.resources.as_ref();
    // KubeVirt reports only the first memory conflict.
    let conflict = if memory.guest.is_some() {
        Some(domain.child("memory").child("guest"))
    } else if memory.hugepages.is_some() && it.memory.hugepages.is_some() {
        Some(domain.child("memory").child("hugepages"))
    } else if memory.max_guest.is_some() && it.memory.max_guest.is_some() {
        Some(domain.child("memory").child("maxGuest"))
    } else if has(resources.and_then(|r| r.requests.as_ref()), "memory") {
        Some(domain.child("resources").child("requests").child("memory"))
    } else if has(resources.and_then(|r| r.limits.as_ref()), "memory") {
        Some(domain.child("resources").child("limits").child("memory"))
    } else {
        None
    };
    if let Some(p) = conflict {
        c.push(Conflict::at(p));
        return;
    }
    memory.guest = Some(it.memory.guest.clone());
    if it.memory.hugepages.is_some() {
        memory.hugepages.clone_from(&it.memory.hugepages);
    }
    if it.memory.max_guest.is_some() {
        memory.max_guest.clone_from(&it.memory.max_guest);
    }
    // Overcommit: the pod asks for that much less than the guest gets.
    if let Some(pct) = it.memory.overcommit_percent.filter(|p| *p > 0) {
        if let Ok(q) = Quantity::from_k8s(&it.memory.guest) {
            let requested = q.value() * i128::from(100 - pct.min(100)) / 100;
            spec.domain
                .resources
                .get_or_insert_with(Default::default)
                .requests
                .get_or_insert_with(Default::default)
                .insert(
                    "memory".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                        Quantity::from_value(requested).to_string(),
                    ),
                );
        }
    }
}

fn apply_io_threads(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let domain = base.child("domain");
    if let Some(count) = it
        .io_threads
        .as_ref()
        .and_then(|t| t.supplemental_pool_thread_count)
    {
        let threads = spec.domain.io_threads.get_or_insert_with(Default::default);
        if threads.supplemental_pool_thread_count.is_some() {
            c.push(Conflict::at(
                domain
                    .child("ioThreads")
                    .child("supplementalPoolThreadCount"),
            ));
        } else {
            threads.supplemental_pool_thread_count = Some(count);
        }
    }
    if let Some(policy) = &it.io_threads_policy {
        if spec.domain.io_threads_policy.is_some() {
            c.push(Conflict::at(domain.child("ioThreadsPolicy")));
        } else {
            spec.domain.io_threads_policy = Some(policy.clone());
        }
    }
}

/// launchSecurity, GPUs and host devices: set by one or the other.
fn apply_simple(
    base: &Path,
    it: &VirtualMachineInstancetypeSpec,
    spec: &mut VirtualMachineInstanceSpec,
    c: &mut Vec<Conflict>,
) {
    let domain = base.child("domain");
    if let Some(ls) = &it.launch_security {
        if spec.domain.launch_security.is_some() {
            c.push(Conflict::at(domain.child("launchSecurity")));
        } else {
            spec.domain.launch_security = Some(ls.clone());
        }
    }
    let devices = &mut spec.domain.devices;
    if let Some(gpus) = it.gpus.as_ref().filter(|g| !g.is_empty()) {
        if devices.gpus.as_ref().is_some_and(|g| !g.is_empty()) {
            c.push(Conflict::at(domain.child("devices").child("gpus")));
        } else {
            devices.gpus = Some(gpus.clone());
        }
    }
    if let Some(hds) = it.host_devices.as_ref().filter(|h| !h.is_empty()) {
        if devices.host_devices.as_ref().is_some_and(|h| !h.is_empty()) {
            c.push(Conflict::at(domain.child("devices").child("hostDevices")));
        } else {
            devices.host_devices = Some(hds.clone());
        }
    }
}

/// KubeVirt's preference `Apply`: every preferred value the spec leaves unset.
pub fn apply_preference(
    pref: &VirtualMachinePreferenceSpec,
    spec: &mut VirtualMachineInstanceSpec,
    annotations: &mut BTreeMap<String, String>,
) {
    if let Some(features) = pref
        .cpu
        .as_ref()
        .and_then(|c| c.preferred_cpu_features.as_ref())
        .filter(|f| !f.is_empty())
    {
        let cpu = spec.domain.cpu.get_or_insert_with(CPU::default);
        let list = cpu.features.get_or_insert_with(Vec::new);
        for f in features {
            if !list.iter().any(|have| have.name == f.name) {
                list.push(f.clone());
            }
        }
    }
    apply_device_preferences(pref, spec);
    apply_feature_preferences(pref, spec);
    apply_firmware_preferences(pref, spec);
    if let Some(t) = pref
        .machine
        .as_ref()
        .and_then(|m| m.preferred_machine_type.as_ref())
        .filter(|t| !t.is_empty())
    {
        let m = spec.domain.machine.get_or_insert_with(Default::default);
        if m.r#type.as_deref().unwrap_or("").is_empty() {
            m.r#type = Some(t.clone());
        }
    }
    if let Some(clock) = &pref.clock {
        let unset = spec
            .domain
            .clock
            .as_ref()
            .is_none_or(|c| c.utc.is_none() && c.timezone.is_none());
        if let Some(offset) = clock.preferred_clock_offset.as_ref().filter(|_| unset) {
            let c = spec.domain.clock.get_or_insert_with(Default::default);
            c.utc.clone_from(&offset.utc);
            c.timezone.clone_from(&offset.timezone);
        }
        if let Some(timer) = &clock.preferred_timer {
            let c = spec.domain.clock.get_or_insert_with(Default::default);
            if c.timer.is_none() {
                c.timer = Some(timer.clone());
            }
        }
    }
    if spec.subdomain.as_deref().unwrap_or("").is_empty() && pref.preferred_subdomain.is_some() {
        spec.subdomain.clone_from(&pref.preferred_subdomain);
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = pref.preferred_termination_grace_period_seconds;
    }
    if let Some(arch) = pref
        .preferred_architecture
        .as_ref()
        .filter(|a| !a.is_empty())
    {
        if spec.architecture.as_deref().unwrap_or("").is_empty() {
            spec.architecture = Some(arch.clone());
        }
    }
    for (k, v) in pref.annotations.iter().flatten() {
        annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if spec.domain.launch_security.is_none() {
        spec.domain
            .launch_security
            .clone_from(&pref.preferred_launch_security);
    }
}

fn fill<T: Clone>(target: &mut Option<T>, preferred: &Option<T>) {
    if target.is_none() {
        target.clone_from(preferred);
    }
}

fn fill_str(target: &mut Option<String>, preferred: &Option<String>) {
    if target.as_deref().unwrap_or("").is_empty() {
        if let Some(p) = preferred.as_ref().filter(|p| !p.is_empty()) {
            *target = Some(p.clone());
        }
    }
}

fn apply_device_preferences(
    pref: &VirtualMachinePreferenceSpec,
    spec: &mut VirtualMachineInstanceSpec,
) {
    let Some(d) = &pref.devices else {
        return;
    };
    let dev = &mut spec.domain.devices;
    fill(
        &mut dev.use_virtio_transitional,
        &d.preferred_use_virtio_transitional,
    );
    fill(&mut dev.block_multi_queue, &d.preferred_block_multi_queue);
    fill(
        &mut dev.network_interface_multiqueue,
        &d.preferred_network_interface_multi_queue,
    );
    // KubeVirt overrides disableHotplug (its field is not optional, so "unset" is unknown).
    if d.preferred_disable_hotplug.is_some() {
        dev.disable_hotplug = d.preferred_disable_hotplug;
    }
    if let Some(sound) = dev.sound.as_mut() {
        fill_str(&mut sound.model, &d.preferred_sound_model);
    }
    fill(&mut dev.rng, &d.preferred_rng);
    fill(&mut dev.tpm, &d.preferred_tpm);
    if d.preferred_video_type.is_some() {
        fill_str(
            &mut dev.video.get_or_insert_with(Default::default).r#type,
            &d.preferred_video_type,
        );
    }
    fill(
        &mut dev.autoattach_graphics_device,
        &d.preferred_autoattach_graphics_device,
    );
    fill(
        &mut dev.autoattach_mem_balloon,
        &d.preferred_autoattach_mem_balloon,
    );
    fill(
        &mut dev.autoattach_pod_interface,
        &d.preferred_autoattach_pod_interface,
    );
    fill(
        &mut dev.autoattach_serial_console,
        &d.preferred_autoattach_serial_console,
    );
    fill(
        &mut dev.autoattach_input_device,
        &d.preferred_autoattach_input_device,
    );
    for disk in dev.disks.iter_mut().flatten() {
        if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
            disk.disk = Some(Default::default());
        }
        if let Some(t) = disk.disk.as_mut() {
            fill_str(&mut t.bus, &d.preferred_disk_bus);
            let virtio = t.bus.as_deref() == Some("virtio");
            fill(&mut disk.block_size, &d.preferred_disk_block_size);
            fill_str(&mut disk.cache, &d.preferred_disk_cache);
            fill_str(&mut disk.io, &d.preferred_disk_io);
            if virtio {
                fill(
                    &mut disk.dedicated_io_thread,
                    &d.preferred_disk_dedicated_io_thread,
                );
            }
        } else if let Some(t) = disk.cdrom.as_mut() {
            fill_str(&mut t.bus, &d.preferred_cdrom_bus);
        } else if let Some(t) = disk.lun.as_mut() {
            fill_str(&mut t.bus, &d.preferred_lun_bus);
        }
    }
    let pod_networks: Vec<String> = spec
        .networks
        .iter()
        .flatten()
        .filter(|n| n.pod.is_some())
        .map(|n| n.name.clone())
        .collect();
    for iface in spec.domain.devices.interfaces.iter_mut().flatten() {
        fill_str(&mut iface.model, &d.preferred_interface_model);
        let unbound = iface.bridge.is_none()
            && iface.masquerade.is_none()
            && iface.slirp.is_none()
            && iface.sriov.is_none()
            && iface.macvtap.is_none()
            && iface.passt.is_none()
            && iface.passt_binding.is_none()
            && iface.binding.is_none();
        if d.preferred_interface_masquerade.is_some()
            && unbound
            && pod_networks.contains(&iface.name)
        {
            iface
                .masquerade
                .clone_from(&d.preferred_interface_masquerade);
        }
    }
    for input in spec.domain.devices.inputs.iter_mut().flatten() {
        fill_str(&mut input.bus, &d.preferred_input_bus);
        if input.r#type.is_empty() {
            if let Some(t) = d.preferred_input_type.as_ref() {
                input.r#type = t.clone();
            }
        }
    }
    if let Some(model) = &d.preferred_panic_device_model {
        let panics = spec
            .domain
            .devices
            .panic_devices
            .get_or_insert_with(Vec::new);
        if panics.is_empty() {
            panics.push(crate::PanicDevice {
                model: Some(model.clone()),
            });
        } else {
            for p in panics.iter_mut() {
                fill(&mut p.model, &Some(model.clone()));
            }
        }
    }
}

fn apply_feature_preferences(
    pref: &VirtualMachinePreferenceSpec,
    spec: &mut VirtualMachineInstanceSpec,
) {
    let Some(f) = &pref.features else {
        return;
    };
    let features = spec.domain.features.get_or_insert_with(Default::default);
    // KubeVirt overrides ACPI (its field is not optional).
    if f.preferred_acpi.is_some() {
        features.acpi.clone_from(&f.preferred_acpi);
    }
    fill(&mut features.apic, &f.preferred_apic);
    fill(&mut features.kvm, &f.preferred_kvm);
    fill(&mut features.pvspinlock, &f.preferred_pvspinlock);
    fill(&mut features.smm, &f.preferred_smm);
    if let Some(p) = &f.preferred_hyperv {
        let h = features.hyperv.get_or_insert_with(Default::default);
        fill(&mut h.evmcs, &p.evmcs);
        fill(&mut h.frequencies, &p.frequencies);
        fill(&mut h.ipi, &p.ipi);
        fill(&mut h.reenlightenment, &p.reenlightenment);
        fill(&mut h.relaxed, &p.relaxed);
        fill(&mut h.reset, &p.reset);
        fill(&mut h.runtime, &p.runtime);
        fill(&mut h.spinlocks, &p.spinlocks);
        fill(&mut h.synic, &p.synic);
        fill(&mut h.synictimer, &p.synictimer);
        fill(&mut h.tlbflush, &p.tlbflush);
        fill(&mut h.vapic, &p.vapic);
        fill(&mut h.vendorid, &p.vendorid);
        fill(&mut h.vpindex, &p.vpindex);
    }
}

fn apply_firmware_preferences(
    pref: &VirtualMachinePreferenceSpec,
    spec: &mut VirtualMachineInstanceSpec,
) {
    let Some(f) = &pref.firmware else {
        return;
    };
    let fw = spec.domain.firmware.get_or_insert_with(Default::default);
    let had_bootloader = fw.bootloader.is_some();
    let bl = fw.bootloader.get_or_insert_with(Default::default);
    if f.preferred_use_bios == Some(true) && bl.bios.is_none() && bl.efi.is_none() {
        bl.bios = Some(Default::default());
    }
    if let (Some(serial), Some(bios)) = (f.preferred_use_bios_serial, bl.bios.as_mut()) {
        bios.use_serial.get_or_insert(serial);
    }
    if bl.efi.is_none() && bl.bios.is_none() && f.preferred_efi.is_some() {
        bl.efi.clone_from(&f.preferred_efi);
    } else {
        if f.preferred_use_efi == Some(true) && bl.efi.is_none() && bl.bios.is_none() {
            bl.efi = Some(Default::default());
        }
        if let (Some(sb), Some(efi)) = (f.preferred_use_secure_boot, bl.efi.as_mut()) {
            efi.secure_boot.get_or_insert(sb);
        }
    }
    // KubeVirt leaves an empty bootloader behind; ours would mean nothing either, so it is
    // not added.
    if !had_bootloader && bl.bios.is_none() && bl.efi.is_none() {
        fw.bootloader = None;
    }
}

/// KubeVirt's preference requirements (`requirements.Check`), on the spec after the
/// instancetype and defaults were applied: the vCPUs, memory and architecture the preference
/// needs. The error carries the conflicting fields and KubeVirt's message.
pub fn check_requirements(
    it: Option<&VirtualMachineInstancetypeSpec>,
    pref: Option<&VirtualMachinePreferenceSpec>,
    spec: &VirtualMachineInstanceSpec,
) -> Result<(), (Vec<String>, String)> {
    let Some(req) = pref.and_then(|p| p.requirements.as_ref()) else {
        return Ok(());
    };
    let cpu_path = Path::root("spec")
        .child("template")
        .child("spec")
        .child("domain")
        .child("cpu");
    if let Some(need) = req.cpu.as_ref().map(|c| c.guest) {
        if let Some(it) = it {
            if it.cpu.guest < need {
                return Err((
                    vec!["spec.instancetype".into()],
                    format!(
                        "insufficient CPU resources of {} vCPU provided by instance type, preference requires {need} vCPU",
                        it.cpu.guest
                    ),
                ));
            }
        } else {
            let Some(cpu) = spec.domain.cpu.as_ref() else {
                return Err((
                    vec![cpu_path.into()],
                    format!("no CPU resources provided by VirtualMachine, preference requires {need} vCPU"),
                ));
            };
            let (s, c, t) = (
                cpu.sockets.unwrap_or(0),
                cpu.cores.unwrap_or(0),
                cpu.threads.unwrap_or(0),
            );
            let short = |have: i64, fields: &[&str], what: &str| {
                Err((
                    fields.iter().map(|f| cpu_path.child(f).into()).collect(),
                    format!(
                        "insufficient CPU resources of {have} vCPU provided by VirtualMachine, preference requires {need} vCPU provided as {what}"
                    ),
                ))
            };
            match preferred_topology(pref) {
                Topology::Threads if t < need => return short(t, &["threads"], "threads"),
                Topology::Cores if c < need => return short(c, &["cores"], "cores"),
                Topology::Sockets if s < need => return short(s, &["sockets"], "sockets"),
                Topology::Spread => {
                    let (_, across) = spread_options(pref);
                    let (have, fields): (i64, &[&str]) = match across {
                        Across::SocketsCores => (s.saturating_mul(c), &["sockets", "cores"]),
                        Across::CoresThreads => (c.saturating_mul(t), &["cores", "threads"]),
                        Across::SocketsCoresThreads => (
                            s.saturating_mul(c).saturating_mul(t),
                            &["sockets", "cores", "threads"],
                        ),
                    };
                    if have < need {
                        return short(have, fields, &across.to_string());
                    }
                }
                Topology::Any => {
                    let have = c.saturating_mul(s).saturating_mul(t);
                    if have < need {
                        return short(
                            have,
                            &["cores", "sockets", "threads"],
                            "cores, sockets and threads",
                        );
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(need) = req.memory.as_ref().map(|m| &m.guest) {
        let (field, source) = if it.is_some() {
            ("spec.instancetype".to_string(), "instance type")
        } else {
            (
                Path::root("spec")
                    .child("template")
                    .child("spec")
                    .child("domain")
                    .child("memory")
                    .into(),
                "VirtualMachine",
            )
        };
        let provided = spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.clone())
            .or_else(|| it.map(|i| i.memory.guest.clone()));
        let have = provided
            .as_ref()
            .and_then(|q| Quantity::from_k8s(q).ok())
            .unwrap_or(Quantity::from_value(0));
        // A requirement that is no quantity was refused by the preference's own admission.
        if let Ok(want) = Quantity::from_k8s(need) {
            if have < want {
                let shown = provided.map(|q| q.0).unwrap_or_else(|| "0".into());
                return Err((
                    vec![field],
                    format!(
                        "insufficient Memory resources of {shown} provided by {source}, preference requires {}",
                        need.0
                    ),
                ));
            }
        }
    }
    if let Some(arch) = &req.architecture {
        let have = spec.architecture.as_deref().unwrap_or("");
        if have != arch {
            return Err((
                vec!["spec.template.spec.architecture".into()],
                format!("preference requires architecture {arch} but {have} is being requested"),
            ));
        }
    }
    Ok(())
}

/// The requirement failure as KubeVirt's VM admitter reports it.
pub fn requirements_error(fields: &[String], message: &str) -> FieldError {
    FieldError::new(
        CauseType::FieldValueNotFound,
        fields.join(", "),
        format!("failure checking preference requirements: {message}"),
    )
}

/// Which of the two a matcher refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Instancetype,
    Preference,
}

/// A VM's instancetype or preference matcher: its name, whether it is the namespaced kind,
/// and the revision it pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub which: Which,
    pub name: String,
    pub revision: Option<String>,
    pub namespaced: bool,
    /// A kind KubeVirt does not know ("got unexpected kind in ...Matcher").
    pub unknown_kind: Option<String>,
}

impl Matcher {
    pub fn of(vm: &VirtualMachine, which: Which) -> Option<Matcher> {
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
        let (namespaced, cluster) = match which {
            Which::Instancetype => (
                ["virtualmachineinstancetype", "virtualmachineinstancetypes"],
                [
                    "virtualmachineclusterinstancetype",
                    "virtualmachineclusterinstancetypes",
                ],
            ),
            Which::Preference => (
                ["virtualmachinepreference", "virtualmachinepreferences"],
                [
                    "virtualmachineclusterpreference",
                    "virtualmachineclusterpreferences",
                ],
            ),
        };
        let is_namespaced = namespaced.contains(&kind.as_str());
        let unknown_kind =
            (!is_namespaced && !kind.is_empty() && !cluster.contains(&kind.as_str()))
                .then(|| kind.clone());
        Some(Matcher {
            which,
            name: name.unwrap_or_default(),
            revision: revision.filter(|r| !r.is_empty()),
            namespaced: is_namespaced,
            unknown_kind,
        })
    }

    /// The kind as KubeVirt writes it in the status reference.
    pub fn kind_name(&self) -> &'static str {
        match (self.which, self.namespaced) {
            (Which::Instancetype, true) => "VirtualMachineInstancetype",
            (Which::Instancetype, false) => "VirtualMachineClusterInstancetype",
            (Which::Preference, true) => "VirtualMachinePreference",
            (Which::Preference, false) => "VirtualMachineClusterPreference",
        }
    }

    /// The resource's plural (the REST path segment).
    pub fn plural(&self) -> &'static str {
        match (self.which, self.namespaced) {
            (Which::Instancetype, true) => "virtualmachineinstancetypes",
            (Which::Instancetype, false) => "virtualmachineclusterinstancetypes",
            (Which::Preference, true) => "virtualmachinepreferences",
            (Which::Preference, false) => "virtualmachineclusterpreferences",
        }
    }
}

/// The spec of the VM's instancetype and preference as KubeVirt's `SpecFinder` finds them;
/// `None` for one the VM does not name or that is not there (KubeVirt's VM admitter goes on
/// without it, so a VM may be created before its instancetype). A name that is no Kubernetes
/// name is never looked up.
pub fn find(
    vm: &VirtualMachine,
    lookup: &dyn Lookup,
) -> (
    Option<VirtualMachineInstancetypeSpec>,
    Option<VirtualMachinePreferenceSpec>,
) {
    let it = find_one(vm, Which::Instancetype, lookup).and_then(|v| serde_json::from_value(v).ok());
    let pref = find_one(vm, Which::Preference, lookup).and_then(|v| serde_json::from_value(v).ok());
    (it, pref)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && crate::names::dns1123_subdomain(n).is_none()
}

/// The `spec` of one, as JSON.
fn find_one(vm: &VirtualMachine, which: Which, lookup: &dyn Lookup) -> Option<serde_json::Value> {
    let m = Matcher::of(vm, which)?;
    let ns = vm.metadata.namespace.as_deref().unwrap_or("");
    let revision = |name: &str| {
        if !valid_name(name) {
            return None;
        }
        lookup.get("apps", "controllerrevisions", ns, name)
    };
    if let Some(rev) = &m.revision {
        return revision(rev).and_then(|r| r.pointer("/data/spec").cloned());
    }
    let status = vm.status.as_ref();
    let recorded = match which {
        Which::Instancetype => status.and_then(|s| s.instancetype_ref.as_ref()),
        Which::Preference => status.and_then(|s| s.preference_ref.as_ref()),
    }
    .and_then(|r| r.controller_revision_ref.as_ref())
    .and_then(|c| c.name.as_deref())
    .filter(|n| !n.is_empty());
    if let Some(rev) = recorded.and_then(revision) {
        // Only a copy of the object the VM names now.
        if rev
            .pointer(&format!(
                "/metadata/labels/{}",
                REVISION_NAME_LABEL.replace('/', "~1")
            ))
            .and_then(|v| v.as_str())
            == Some(m.name.as_str())
        {
            return rev.pointer("/data/spec").cloned();
        }
    }
    if m.unknown_kind.is_some() || !valid_name(&m.name) {
        return None;
    }
    let obj_ns = if m.namespaced { ns } else { "" };
    lookup
        .get(GROUP, m.plural(), obj_ns, &m.name)
        .and_then(|o| o.get("spec").cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn it(v: serde_json::Value) -> VirtualMachineInstancetypeSpec {
        serde_json::from_value(v).expect("instancetype")
    }
    fn pref(v: serde_json::Value) -> VirtualMachinePreferenceSpec {
        serde_json::from_value(v).expect("preference")
    }
    fn spec(v: serde_json::Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(v).expect("spec")
    }
    fn base() -> Path {
        Path::root("spec").child("template").child("spec")
    }

    #[test]
    fn cpu_and_memory_come_from_the_instancetype() {
        let mut s = spec(json!({"domain": {"devices": {}}}));
        let i = it(
            json!({"cpu": {"guest": 4}, "memory": {"guest": "2Gi", "overcommitPercent": 25},
                          "annotations": {"a": "b"}}),
        );
        let mut ann = BTreeMap::new();
        apply(&base(), Some(&i), None, &mut s, &mut ann).expect("no conflicts");
        let cpu = s.domain.cpu.clone().expect("cpu");
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(4), Some(1), Some(1))
        );
        assert_eq!(
            s.domain.memory.and_then(|m| m.guest).map(|q| q.0),
            Some("2Gi".into())
        );
        assert_eq!(
            s.domain
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("memory").cloned())
                .map(|q| q.0),
            Some("1536Mi".to_string()),
            "75% of 2Gi"
        );
        assert_eq!(ann.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn fields_the_template_sets_conflict() {
        let mut s = spec(
            json!({"domain": {"devices": {}, "cpu": {"sockets": 2, "cores": 1},
                                           "memory": {"guest": "1Gi"},
                                           "resources": {"requests": {"cpu": "1"}}},
                                "nodeSelector": {"a": "b"}}),
        );
        let i = it(
            json!({"cpu": {"guest": 4}, "memory": {"guest": "2Gi"}, "nodeSelector": {"x": "y"},
                          "annotations": {"k": "v"}}),
        );
        let mut ann = BTreeMap::from([("k".to_string(), "other".to_string())]);
        let err = apply(&base(), Some(&i), None, &mut s, &mut ann).expect_err("conflicts");
        let paths: Vec<&str> = err.0.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.nodeSelector",
                "spec.template.spec.domain.resources.requests.cpu",
                "spec.template.spec.domain.cpu.sockets",
                "spec.template.spec.domain.cpu.cores",
                "spec.template.spec.domain.memory.guest",
                "annotations.k",
            ]
        );
        assert_eq!(
            err.0[2].to_string(),
            "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type"
        );
    }

    #[test]
    fn preferred_topology_places_the_vcpus() {
        let t = |topo: &str| pref(json!({"cpu": {"preferredCPUTopology": topo}}));
        assert_eq!(guest_topology(4, None), (4, 1, 1));
        assert_eq!(guest_topology(4, Some(&t("preferSockets"))), (4, 1, 1));
        assert_eq!(guest_topology(4, Some(&t("cores"))), (1, 4, 1));
        assert_eq!(guest_topology(4, Some(&t("threads"))), (1, 1, 4));
        assert_eq!(guest_topology(4, Some(&t("any"))), (4, 1, 1));
        assert_eq!(guest_topology(4, Some(&t("spread"))), (2, 2, 1));
        assert_eq!(guest_topology(1, Some(&t("cores"))), (1, 1, 1));
        let across = |a: &str| {
            pref(
                json!({"cpu": {"preferredCPUTopology": "spread", "spreadOptions": {"across": a, "ratio": 2}}}),
            )
        };
        assert_eq!(guest_topology(8, Some(&across("CoresThreads"))), (1, 4, 2));
        assert_eq!(
            guest_topology(8, Some(&across("SocketsCoresThreads"))),
            (2, 2, 2)
        );
        // Hostile counts never divide by zero or overflow.
        let zero =
            pref(json!({"cpu": {"preferredCPUTopology": "spread", "spreadOptions": {"ratio": 0}}}));
        assert_eq!(guest_topology(i64::MAX, Some(&zero)), (i64::MAX, 1, 1));
        assert!(check_spread(
            Some(&it(
                json!({"cpu": {"guest": 3}, "memory": {"guest": "1Gi"}})
            )),
            Some(&zero)
        )
        .is_some());
        assert_eq!(guest_topology(-5, None), (1, 1, 1));
    }

    #[test]
    fn spread_needs_a_divisible_count() {
        let p = pref(json!({"cpu": {"preferredCPUTopology": "spread"}}));
        let c = check_spread(
            Some(&it(
                json!({"cpu": {"guest": 3}, "memory": {"guest": "1Gi"}}),
            )),
            Some(&p),
        )
        .expect("3 is odd");
        assert_eq!(c.path, "instancetype.spec.cpu.guest");
        assert!(c
            .to_string()
            .starts_with("3 vCPUs provided by the instance type are not divisible"));
        assert!(check_spread(
            Some(&it(
                json!({"cpu": {"guest": 4}, "memory": {"guest": "1Gi"}})
            )),
            Some(&p)
        )
        .is_none());
    }

    #[test]
    fn preference_fills_only_what_is_empty() {
        let p = pref(json!({
            "devices": {"preferredDiskBus": "virtio", "preferredInterfaceModel": "e1000e",
                        "preferredCdromBus": "sata", "preferredDiskDedicatedIoThread": true,
                        "preferredInterfaceMasquerade": {}},
            "preferredTerminationGracePeriodSeconds": 5,
            "machine": {"preferredMachineType": "pc-q35-9.0"},
            "annotations": {"p": "1", "keep": "pref"}
        }));
        let mut s = spec(json!({"domain": {"devices": {
            "disks": [{"name": "a"}, {"name": "b", "disk": {"bus": "sata"}}, {"name": "c", "cdrom": {}}],
            "interfaces": [{"name": "default"}, {"name": "x", "bridge": {}, "model": "rtl8139"}]}},
            "networks": [{"name": "default", "pod": {}}, {"name": "x", "multus": {"networkName": "n"}}]}));
        let mut ann = BTreeMap::from([("keep".to_string(), "vm".to_string())]);
        apply(&base(), None, Some(&p), &mut s, &mut ann).expect("no conflicts");
        let disks = s.domain.devices.disks.clone().expect("disks");
        assert_eq!(
            disks[0].disk.as_ref().and_then(|d| d.bus.as_deref()),
            Some("virtio")
        );
        assert_eq!(disks[0].dedicated_io_thread, Some(true));
        assert_eq!(
            disks[1].disk.as_ref().and_then(|d| d.bus.as_deref()),
            Some("sata")
        );
        assert_eq!(disks[1].dedicated_io_thread, None, "only on virtio disks");
        assert_eq!(
            disks[2].cdrom.as_ref().and_then(|d| d.bus.as_deref()),
            Some("sata")
        );
        let ifs = s.domain.devices.interfaces.clone().expect("interfaces");
        assert_eq!(ifs[0].model.as_deref(), Some("e1000e"));
        assert!(ifs[0].masquerade.is_some());
        assert_eq!(ifs[1].model.as_deref(), Some("rtl8139"));
        assert!(ifs[1].masquerade.is_none());
        assert_eq!(s.termination_grace_period_seconds, Some(5));
        assert_eq!(
            s.domain.machine.and_then(|m| m.r#type).as_deref(),
            Some("pc-q35-9.0")
        );
        assert_eq!(ann.get("keep").map(String::as_str), Some("vm"));
        assert_eq!(ann.get("p").map(String::as_str), Some("1"));
    }

    #[test]
    fn requirements_name_what_is_short() {
        let p = pref(json!({"requirements": {"cpu": {"guest": 4}, "memory": {"guest": "2Gi"}}}));
        let small = it(json!({"cpu": {"guest": 2}, "memory": {"guest": "4Gi"}}));
        let (fields, msg) = check_requirements(
            Some(&small),
            Some(&p),
            &spec(json!({"domain": {"devices": {}}})),
        )
        .expect_err("2 < 4");
        assert_eq!(fields, ["spec.instancetype"]);
        assert_eq!(msg, "insufficient CPU resources of 2 vCPU provided by instance type, preference requires 4 vCPU");
        let s = spec(
            json!({"domain": {"devices": {}, "cpu": {"sockets": 4}, "memory": {"guest": "1Gi"}}}),
        );
        let (fields, msg) = check_requirements(None, Some(&p), &s).expect_err("1Gi < 2Gi");
        assert_eq!(fields, ["spec.template.spec.domain.memory"]);
        assert_eq!(msg, "insufficient Memory resources of 1Gi provided by VirtualMachine, preference requires 2Gi");
        let huge = spec(
            json!({"domain": {"devices": {}, "cpu": {"sockets": i64::MAX, "cores": i64::MAX, "threads": 2}, "memory": {"guest": "2Gi"}}}),
        );
        let any = pref(
            json!({"cpu": {"preferredCPUTopology": "any"}, "requirements": {"cpu": {"guest": 4}}}),
        );
        assert!(
            check_requirements(None, Some(&any), &huge).is_ok(),
            "saturates, no overflow"
        );
    }
}
