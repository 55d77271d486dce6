//! KubeVirt's VM rollout strategy `LiveUpdate` (the default in v1.9): a running VM's CPU
//! sockets and guest memory follow its template without a restart, and any change that
//! cannot be applied live sets the VM's `RestartRequired` condition with KubeVirt's message.
//!
//! Source of the rules: KubeVirt `pkg/virt-controller/watch/vm/vm.go`
//! (`syncRestartRequired`, `handleCPUChangeRequest`, `handleMemoryHotplugRequest`),
//! `pkg/defaults` (`setupCPUHotplug`, `setupMemoryHotplug`) and `pkg/liveupdate/memory`
//! (`ValidateLiveUpdateMemory`). KubeVirt applies CPU and memory changes with a live
//! migration; kubevirt-rs hotplugs them into the same QEMU (the handler asks the launcher,
//! `setResources`), so "only for migratable VMs" is not a limit here.
//!
//! KubeVirt remembers the VM spec a VMI started from in a ControllerRevision; kubevirt-rs keeps
//! it on the VMI, in the [`LAST_SEEN_SPEC_ANNOTATION`] annotation, written when the VMI is
//! created.

use kubevirt_api::quantity::Quantity;
use kubevirt_api::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec};
use kubevirt_runtime::cluster::{ClusterConfig, RolloutStrategy};
use serde_json::{json, Value};

/// The VM template spec a VMI was created from (JSON), KubeVirt's "last seen" VM spec.
pub const LAST_SEEN_SPEC_ANNOTATION: &str = "kubevirt-rs.io/vm-template-spec";
/// KubeVirt's `VirtualMachineRestartRequired` condition type.
pub const RESTART_REQUIRED: &str = "RestartRequired";

/// KubeVirt's messages.
pub mod msg {
    pub const NON_LIVE_UPDATABLE: &str =
        "a non-live-updatable field was changed in the template spec";
    pub const SOCKETS_ABOVE_MAX: &str =
        "CPU sockets updated in template spec to a value higher than what's available";
    pub const SOCKETS_REDUCED: &str = "Reduction of CPU socket count requires a restart";
    pub const MEMORY_NOT_AVAILABLE: &str =
        "memory updated in template spec. Memory-hotplug is not available for this VM configuration";
    pub const MEMORY_BELOW_BOOT: &str =
        "memory updated in template spec to a value lower than what the VM started with";
    pub const MEMORY_ABOVE_MAX: &str =
        "memory updated in template spec to a value higher than what's available";
    /// kubevirt-rs's own: microvm has no ACPI CPU hotplug.
    pub const MICROVM_CPU: &str =
        "CPU sockets updated in template spec: machine type microvm cannot hotplug CPUs";
}

/// KubeVirt's hotplug block (2Mi) and the least guest memory for memory hotplug (1Gi).
const BLOCK: u64 = 2 << 20;
const MIN_GUEST: u64 = 1 << 30;
/// KubeVirt's upper bound of vCPUs when it computes maxSockets.
const MAX_VCPUS: i64 = 512;

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<u64> {
    q.and_then(|q| Quantity::from_k8s(q).ok())
        .and_then(|q| u64::try_from(q.value()).ok())
}

fn quantity(b: u64) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        Quantity::from_value(i128::from(b)).to_string(),
    )
}

fn is_microvm(spec: &VirtualMachineInstanceSpec) -> bool {
    spec.domain
        .machine
        .as_ref()
        .and_then(|m| m.r#type.as_deref())
        == Some("microvm")
}

/// KubeVirt's `ValidateLiveUpdateMemory` (what applies here), plus kubevirt-rs's limits:
/// no memory hotplug on microvm nor with hugepages.
pub fn validate_live_update_memory(
    spec: &VirtualMachineInstanceSpec,
    max_guest: Option<u64>,
) -> Result<(), String> {
    let mem = spec.domain.memory.as_ref();
    if mem.and_then(|m| m.hugepages.as_ref()).is_some() {
        return Err("Memory hotplug is not available with hugepages in kubevirt-rs".into());
    }
    if is_microvm(spec) {
        return Err("Memory hotplug is not available for machine type microvm".into());
    }
    let Some(guest) = bytes(mem.and_then(|m| m.guest.as_ref())) else {
        return Err("Guest memory must be configured when memory hotplug is enabled".into());
    };
    let Some(max_guest) = max_guest else {
        return Err("Max guest memory must be configured when memory hotplug is enabled".into());
    };
    if guest > max_guest {
        return Err("Guest memory is greater than the configured maxGuest memory".into());
    }
    if !guest.is_multiple_of(BLOCK) {
        return Err("Guest memory must be 2Mi aligned".into());
    }
    if !max_guest.is_multiple_of(BLOCK) {
        return Err("MaxGuest must be 2Mi aligned".into());
    }
    if spec.architecture.as_deref().unwrap_or("amd64") != "amd64" {
        return Err("Memory hotplug is only available for x86_64 VMs".into());
    }
    if guest < MIN_GUEST {
        return Err(
            "Memory hotplug is only available for VMs with at least 1Gi of guest memory".into(),
        );
    }
    Ok(())
}

/// KubeVirt's `setupHotplug` on a defaulted VMI spec: under LiveUpdate, `maxSockets` and
/// `maxGuest` get the room to grow into (the cluster's limits, else ratio × the boot value).
/// A VMI whose memory cannot be hotplugged gets no `maxGuest`; microvm gets neither.
pub fn setup_hotplug(spec: &mut VirtualMachineInstanceSpec, cfg: &ClusterConfig) {
    if cfg.vm_rollout_strategy != RolloutStrategy::LiveUpdate || is_microvm(spec) {
        return;
    }
    let ratio = i64::from(cfg.live_update.max_hotplug_ratio.max(1));
    if let Some(cpu) = spec.domain.cpu.as_mut() {
        let sockets = cpu.sockets.unwrap_or(1).max(1);
        if cpu.max_sockets.unwrap_or(0) == 0 {
            let mut max = match cfg.live_update.max_cpu_sockets {
                Some(m) => i64::from(m).max(sockets),
                None => {
                    let per_socket =
                        cpu.cores.unwrap_or(1).max(1) * cpu.threads.unwrap_or(1).max(1);
                    let max = sockets * ratio;
                    if max * per_socket > MAX_VCPUS {
                        (MAX_VCPUS / per_socket).max(sockets)
                    } else {
                        max
                    }
                }
            };
            max = max.max(sockets);
            cpu.max_sockets = Some(max);
        }
    }
    let has_max = spec
        .domain
        .memory
        .as_ref()
        .is_some_and(|m| m.max_guest.is_some());
    if has_max {
        return;
    }
    let guest = bytes(spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref()));
    let max_guest = cfg
        .live_update
        .max_guest
        .or_else(|| guest.map(|g| g.saturating_mul(ratio as u64)));
    match validate_live_update_memory(spec, max_guest) {
        Ok(()) => {
            if let (Some(m), Some(max)) = (spec.domain.memory.as_mut(), max_guest) {
                m.max_guest = Some(quantity(max));
            }
        }
        Err(why) => tracing::debug!(%why, "memory hotplug disabled"),
    }
}

/// Readies a VMI the VM controller is about to create: hotplug room ([`setup_hotplug`]) and
/// the template it starts from ([`LAST_SEEN_SPEC_ANNOTATION`]).
pub fn prepare_vmi(vmi: &mut VirtualMachineInstance, vm: &VirtualMachine, cfg: &ClusterConfig) {
    setup_hotplug(&mut vmi.spec, cfg);
    let template = vm.spec.template.spec.clone().unwrap_or_default();
    if let Ok(json) = serde_json::to_string(&template) {
        vmi.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(LAST_SEEN_SPEC_ANNOTATION.into(), json);
    }
}

/// The template spec as JSON with the live-updatable fields taken out (and objects they
/// leave empty dropped), for comparing two specs.
fn without_live_fields(spec: &VirtualMachineInstanceSpec, strategy: RolloutStrategy) -> Value {
    // Hotpluggable volumes come and go on a running VM whatever the rollout strategy
    // (declarative hotplug, `super::hotplug`).
    let mut v =
        serde_json::to_value(super::hotplug::without_hotplugged(spec)).unwrap_or(Value::Null);
    if strategy != RolloutStrategy::LiveUpdate {
        return v;
    }
    if let Some(o) = v.as_object_mut() {
        for k in ["nodeSelector", "affinity", "tolerations"] {
            o.remove(k);
        }
    }
    if let Some(domain) = v.get_mut("domain").and_then(Value::as_object_mut) {
        for (obj, field) in [("cpu", "sockets"), ("memory", "guest")] {
            let empty = match domain.get_mut(obj).and_then(Value::as_object_mut) {
                Some(o) => {
                    o.remove(field);
                    o.is_empty()
                }
                None => false,
            };
            if empty {
                domain.remove(obj);
            }
        }
    }
    v
}

/// What one sync does for a running VMI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// A merge patch of the VMI's spec (with its resourceVersion) that applies the live change.
    pub patch: Option<Value>,
    /// The VM's `RestartRequired` message; `None` removes the condition.
    pub restart_required: Option<String>,
}

/// KubeVirt's `syncRestartRequired` followed by `handleCPUChangeRequest` and
/// `handleMemoryHotplugRequest`. `template` is the VM's current template spec with its
/// instancetype applied; `vmi` the VMI it runs (its [`LAST_SEEN_SPEC_ANNOTATION`] is the
/// template it started from).
pub fn plan(
    template: &VirtualMachineInstanceSpec,
    raw_template: &VirtualMachineInstanceSpec,
    vmi: &VirtualMachineInstance,
    strategy: RolloutStrategy,
) -> Plan {
    let last_seen: Option<VirtualMachineInstanceSpec> = vmi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_SEEN_SPEC_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok());
    if let Some(last) = &last_seen {
        if without_live_fields(last, strategy) != without_live_fields(raw_template, strategy) {
            return restart_only(msg::NON_LIVE_UPDATABLE.into());
        }
    }
    if strategy != RolloutStrategy::LiveUpdate {
        return Plan::default();
    }
    let mut spec_patch = serde_json::Map::new();
    let mut restart: Option<String> = None;

    // CPU sockets.
    let want = template.domain.cpu.as_ref().and_then(|c| c.sockets);
    let vcpu = vmi.spec.domain.cpu.as_ref();
    if let (Some(want), Some(vcpu)) = (want, vcpu) {
        let have = vcpu.sockets.unwrap_or(1);
        if want != have {
            let max = vcpu.max_sockets.unwrap_or(0);
            if is_microvm(&vmi.spec) {
                restart = Some(msg::MICROVM_CPU.into());
            } else if want > max {
                restart = Some(msg::SOCKETS_ABOVE_MAX.into());
            } else if want < have {
                restart = Some(msg::SOCKETS_REDUCED.into());
            } else {
                spec_patch.insert("cpu".into(), json!({"sockets": want}));
            }
        }
    }

    // Guest memory.
    let want = bytes(
        template
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.as_ref()),
    );
    let vmem = vmi.spec.domain.memory.as_ref();
    let have = bytes(vmem.and_then(|m| m.guest.as_ref()));
    let status_mem = vmi.status.as_ref().and_then(|s| s.memory.as_ref());
    let at_boot = bytes(status_mem.and_then(|m| m.guest_at_boot.as_ref())).or(have);
    if let (Some(want), Some(have)) = (want, have) {
        if want != have {
            let max = bytes(vmem.and_then(|m| m.max_guest.as_ref()));
            let verdict = match max {
                None => Err(msg::MEMORY_NOT_AVAILABLE.to_string()),
                Some(max) => match validate_live_update_memory(template, Some(max)) {
                    Err(e) => Err(format!("memory hotplug not supported, {e}")),
                    Ok(()) if at_boot.is_some_and(|b| want < b) => {
                        Err(msg::MEMORY_BELOW_BOOT.to_string())
                    }
                    Ok(()) if want > max => Err(msg::MEMORY_ABOVE_MAX.to_string()),
                    Ok(()) => Ok(()),
                },
            };
            match verdict {
                Err(m) => restart = Some(m),
                Ok(()) => {
                    let memory = json!({"guest": quantity(want)});
                    // KubeVirt raises the memory request by the same amount.
                    let req = vmi
                        .spec
                        .domain
                        .resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| bytes(r.get("memory")));
                    spec_patch.insert("memory".into(), memory);
                    if let Some(req) = req {
                        let new_req = (req as i128 + want as i128 - have as i128).max(want as i128);
                        spec_patch.insert(
                            "resources".into(),
                            json!({"requests": {"memory": quantity(new_req as u64)}}),
                        );
                    }
                }
            }
        }
    }
    Plan {
        patch: (!spec_patch.is_empty()).then(|| {
            json!({
                "metadata": {"resourceVersion": vmi.metadata.resource_version},
                "spec": {"domain": Value::Object(spec_patch)},
            })
        }),
        restart_required: restart,
    }
}

fn restart_only(message: String) -> Plan {
    Plan {
        patch: None,
        restart_required: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_runtime::cluster::ClusterConfig;

    /// A template spec: `cpu` and `memory` objects, plus other spec fields.
    fn spec(domain: Value, other: Value) -> VirtualMachineInstanceSpec {
        let mut v = json!({"domain": domain});
        if let (Some(o), Some(extra)) = (v.as_object_mut(), other.as_object()) {
            o.extend(extra.clone());
        }
        v["domain"]["devices"] = json!({});
        serde_json::from_value(v).expect("spec")
    }

    fn domain(cpu: Value, memory: Value) -> VirtualMachineInstanceSpec {
        spec(json!({"cpu": cpu, "memory": memory}), json!({}))
    }

    /// A running VMI started from `t` (defaulted as the controller creates it).
    fn running(t: VirtualMachineInstanceSpec, cfg: &ClusterConfig) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance {
            metadata: Default::default(),
            spec: t.clone(),
            status: None,
        };
        let vm = VirtualMachine {
            metadata: Default::default(),
            spec: kubevirt_api::VirtualMachineSpec {
                template: kubevirt_api::VirtualMachineInstanceTemplateSpec {
                    spec: Some(t),
                    ..Default::default()
                },
                ..Default::default()
            },
            status: None,
        };
        kubevirt_api::defaults::default_vmi(&mut vmi, &cfg.defaults());
        prepare_vmi(&mut vmi, &vm, cfg);
        vmi.metadata.resource_version = Some("7".into());
        let guest = vmi
            .spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.clone());
        vmi.status = Some(kubevirt_api::VirtualMachineInstanceStatus {
            memory: Some(kubevirt_api::MemoryStatus {
                guest_at_boot: guest.clone(),
                guest_current: guest.clone(),
                guest_requested: guest,
                ..Default::default()
            }),
            ..Default::default()
        });
        vmi
    }

    fn base() -> VirtualMachineInstanceSpec {
        domain(json!({"sockets": 1, "cores": 2}), json!({"guest": "1Gi"}))
    }

    fn plan_for(vmi: &VirtualMachineInstance, t: &VirtualMachineInstanceSpec) -> Plan {
        plan(t, t, vmi, RolloutStrategy::LiveUpdate)
    }

    #[test]
    fn hotplug_room_follows_kubevirts_defaults() {
        let cfg = ClusterConfig::default();
        let vmi = running(base(), &cfg);
        assert_eq!(vmi.spec.domain.cpu.as_ref().unwrap().max_sockets, Some(4));
        let mem = vmi.spec.domain.memory.as_ref().unwrap();
        assert_eq!(mem.max_guest.as_ref().unwrap().0, "4Gi");

        // Below 1Gi there is no memory hotplug; CPU hotplug stays.
        let small = running(domain(json!({}), json!({"guest": "512Mi"})), &cfg);
        assert_eq!(small.spec.domain.memory.unwrap().max_guest, None);
        assert_eq!(small.spec.domain.cpu.unwrap().max_sockets, Some(4));
        // 512 vCPUs at most: 64 cores a socket allow 8 sockets, not 4 × 4.
        let wide = running(
            domain(json!({"sockets": 4, "cores": 64}), json!({"guest": "1Gi"})),
            &cfg,
        );
        assert_eq!(wide.spec.domain.cpu.unwrap().max_sockets, Some(8));
        // The cluster's limits win; microvm and Stage get nothing.
        let mut limited = ClusterConfig::default();
        limited.live_update.max_cpu_sockets = Some(3);
        limited.live_update.max_guest = Some(3 << 30);
        let v = running(base(), &limited);
        assert_eq!(v.spec.domain.cpu.unwrap().max_sockets, Some(3));
        assert_eq!(v.spec.domain.memory.unwrap().max_guest.unwrap().0, "3Gi");
        let micro = spec(
            json!({"machine": {"type": "microvm"}, "memory": {"guest": "1Gi"}}),
            json!({}),
        );
        let v = running(micro, &cfg);
        assert_eq!(v.spec.domain.cpu.unwrap().max_sockets, None);
        assert_eq!(v.spec.domain.memory.unwrap().max_guest, None);
        let stage = ClusterConfig {
            vm_rollout_strategy: RolloutStrategy::Stage,
            ..ClusterConfig::default()
        };
        let v = running(base(), &stage);
        assert_eq!(v.spec.domain.cpu.unwrap().max_sockets, None);
    }

    #[test]
    fn more_sockets_and_memory_patch_the_vmi_spec() {
        let vmi = running(base(), &ClusterConfig::default());
        let p = plan_for(
            &vmi,
            &domain(json!({"sockets": 3, "cores": 2}), json!({"guest": "2Gi"})),
        );
        assert_eq!(p.restart_required, None);
        assert_eq!(
            p.patch.unwrap(),
            json!({"metadata": {"resourceVersion": "7"},
                   "spec": {"domain": {"cpu": {"sockets": 3}, "memory": {"guest": "2Gi"}}}})
        );
        // Nothing changed: nothing to do.
        assert_eq!(plan_for(&vmi, &base()), Plan::default());
    }

    #[test]
    fn what_cannot_be_applied_live_requires_a_restart_with_kubevirts_message() {
        let vmi = running(base(), &ClusterConfig::default());
        let rr = |cpu: Value, mem: Value| {
            plan_for(&vmi, &domain(cpu, mem))
                .restart_required
                .unwrap_or_default()
        };
        assert_eq!(
            rr(json!({"sockets": 5, "cores": 2}), json!({"guest": "1Gi"})),
            msg::SOCKETS_ABOVE_MAX
        );
        let mut two = vmi.clone();
        two.spec.domain.cpu.as_mut().unwrap().sockets = Some(2);
        assert_eq!(
            plan_for(&two, &base()).restart_required.as_deref(),
            Some(msg::SOCKETS_REDUCED)
        );
        assert_eq!(
            rr(json!({"sockets": 1, "cores": 2}), json!({"guest": "8Gi"})),
            "memory hotplug not supported, Guest memory is greater than the configured maxGuest memory"
        );
        assert_eq!(
            rr(
                json!({"sockets": 1, "cores": 2}),
                json!({"guest": "1025Mi"})
            ),
            "memory hotplug not supported, Guest memory must be 2Mi aligned"
        );
        // Below the boot memory (the VMI booted with 2Gi).
        let mut grown = vmi.clone();
        grown.spec.domain.memory.as_mut().unwrap().guest = Some(quantity(2 << 30));
        if let Some(m) = grown.status.as_mut().and_then(|s| s.memory.as_mut()) {
            m.guest_at_boot = Some(quantity(2 << 30));
        }
        assert_eq!(
            plan_for(&grown, &base()).restart_required.as_deref(),
            Some(msg::MEMORY_BELOW_BOOT)
        );
        // A VMI without hotplug room.
        let small = running(
            domain(json!({}), json!({"guest": "512Mi"})),
            &ClusterConfig::default(),
        );
        assert_eq!(
            plan_for(&small, &domain(json!({}), json!({"guest": "768Mi"})))
                .restart_required
                .as_deref(),
            Some(msg::MEMORY_NOT_AVAILABLE)
        );
        // Any other field.
        assert_eq!(
            rr(
                json!({"sockets": 2, "cores": 2, "model": "Nehalem"}),
                json!({"guest": "1Gi"})
            ),
            msg::NON_LIVE_UPDATABLE
        );
        // Under Stage even sockets wait for a restart.
        let t = domain(json!({"sockets": 2, "cores": 2}), json!({"guest": "1Gi"}));
        let p = plan(&t, &t, &vmi, RolloutStrategy::Stage);
        assert_eq!(p.restart_required.as_deref(), Some(msg::NON_LIVE_UPDATABLE));
        assert_eq!(p.patch, None);
        // Live-updatable scheduling fields need none.
        let t = spec(
            json!({"cpu": {"sockets": 1, "cores": 2}, "memory": {"guest": "1Gi"}}),
            json!({"nodeSelector": {"disk": "ssd"}}),
        );
        assert_eq!(plan_for(&vmi, &t), Plan::default());
    }

    #[test]
    fn microvm_cannot_hotplug_cpus() {
        let micro = |cpu: Value| {
            spec(
                json!({"machine": {"type": "microvm"}, "cpu": cpu, "memory": {"guest": "1Gi"}}),
                json!({}),
            )
        };
        let mut vmi = running(micro(json!({"sockets": 1})), &ClusterConfig::default());
        // Even with maxSockets set by hand.
        vmi.spec.domain.cpu.as_mut().unwrap().max_sockets = Some(4);
        let p = plan_for(&vmi, &micro(json!({"sockets": 2})));
        assert_eq!(p.restart_required.as_deref(), Some(msg::MICROVM_CPU));
        assert_eq!(p.patch, None);
    }
}
