//! VMI placement and the VMI finalizer; the cluster-mode launcher Pod.
//!
//! A new VMI (phase empty or Pending) is placed on the Node [`crate::scheduler::place`] chooses:
//! `status.nodeName`, the `kubevirt.io/nodeName` label, phase `Scheduled` (the Scheduling and
//! Scheduled transitions are both recorded: there is no Pod to wait for), `Ready=False`, and
//! KubeVirt's `foregroundDeleteVirtualMachine` finalizer. From there the handler on that node
//! owns the phase. A VMI no Node takes stays `Scheduling` with `PodScheduled=False`, reason
//! `Unschedulable` and kube-scheduler's message, until a Node change lets it on one.
//!
//! Deletion contract (KubeVirt's): a deleted VMI keeps its finalizer until it is final; the
//! handler stops the launcher and sets Succeeded/Failed, then this controller removes the
//! finalizer. A VMI that never reached a node (phase "", Pending, Scheduling) is released at
//! once.
//!
//! VMIs have no `/status` subresource (as in KubeVirt), so writes go to the main endpoint as
//! merge patches carrying `metadata.resourceVersion`: a conflict re-reads and retries.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, Pod, PodSpec, ResourceRequirements, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use kubevirt_api::quantity::Quantity;
use kubevirt_api::{VirtualMachineInstance, VirtualMachineInstancePhaseTransitionTimestamp};
use serde_json::json;

use crate::{phase, scheduler, Context, Error, NODE_NAME_LABEL};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kubevirt_api::status::{condition, reason, VmiPhase};

fn pvc_not_found(c: &kubevirt_api::VirtualMachineInstanceCondition) -> bool {
    c.r#type == condition::SYNCHRONIZED && c.reason.as_deref() == Some(reason::FAILED_PVC_NOT_FOUND)
}

/// How often an unschedulable VMI is looked at again besides on Node changes.
const UNSCHEDULABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The Nodes, and how many placed VMIs that are not final each one has (the scheduler's
/// spread).
async fn nodes_and_load(ctx: &Context) -> Result<(Vec<Node>, BTreeMap<String, usize>), Error> {
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok((nodes, load(ctx).await?))
}

/// The claims of the VMI's `persistentVolumeClaim` and `dataVolume` volumes (a DataVolume's
/// claim has its name), each with whether it is hotplugged.
fn placement_claims(vmi: &VirtualMachineInstance) -> impl Iterator<Item = (&str, bool)> {
    vmi.spec.volumes.iter().flatten().filter_map(|v| {
        let claim = match (&v.persistent_volume_claim, &v.data_volume) {
            (Some(c), _) => c.claim_name.as_str(),
            (_, Some(d)) => d.name.as_str(),
            _ => return None,
        };
        Some((claim, v.is_hotpluggable()))
    })
}

/// Whether placing `vmi` looks at claim `name` (of its namespace).
pub fn names_claim(vmi: &VirtualMachineInstance, name: &str) -> bool {
    placement_claims(vmi).any(|(c, _)| c == name)
}

/// What the VMI's claims require of its node (the scheduler's VolumeBinding filter): each
/// claim must exist and be bound, and the volumes they are bound to (through a `claimRef`
/// naming the claim) pin the VMI to the nodes holding their data. A hotplugged volume does not
/// hold the VMI back (it is attached when it is ready, as KubeVirt's attachment Pods are), but
/// once bound its volume pins the VMI too: the node must reach every disk it has.
pub(crate) async fn volumes_of(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
) -> Result<scheduler::Volumes, Error> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use scheduler::NotYet;
    let ns = vmi.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut out = scheduler::Volumes::default();
    for (claim, hotplug) in placement_claims(vmi) {
        let mut wait = |n: NotYet| {
            if !hotplug && out.not_yet.is_none() {
                out.not_yet = Some(n);
            }
        };
        let missing = NotYet::MissingClaim {
            namespace: ns.clone(),
            name: claim.to_string(),
        };
        // A name no claim can have is never read (it becomes part of a request path).
        if kubevirt_api::names::dns1123_subdomain(claim).is_some() {
            wait(missing);
            continue;
        }
        let Some(pvc) = pvcs.get_opt(claim).await? else {
            wait(missing);
            continue;
        };
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let volume = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|n| !n.is_empty());
        let Some(volume) = volume.filter(|_| bound) else {
            wait(NotYet::Unbound);
            continue;
        };
        let pv = match kubevirt_api::names::dns1123_subdomain(volume) {
            None => pvs.get_opt(volume).await?,
            Some(_) => None,
        };
        let Some(pv) = pv else {
            wait(NotYet::MissingVolume);
            continue;
        };
        // A claim naming someone else's volume reaches nothing of it (the handler refuses it
        // with that reason): that volume's node says nothing about this VMI.
        if kubevirt_api::core_kinds::pv_bound_to(&pv, &pvc) {
            out.bound.push(pv);
        }
    }
    Ok(out)
}

/// How many placed VMIs that are not final each node runs (the scheduler's spread).
pub(crate) async fn load(ctx: &Context) -> Result<BTreeMap<String, usize>, Error> {
    let placed = Api::<VirtualMachineInstance>::all(ctx.client.clone())
        .list(&ListParams::default().labels(NODE_NAME_LABEL))
        .await?
        .items;
    let mut load = BTreeMap::new();
    for v in placed.iter().filter(|v| !phase::is_final(v)) {
        if let Some(n) = v.status.as_ref().and_then(|s| s.node_name.clone()) {
            *load.entry(n).or_insert(0) += 1;
        }
    }
    Ok(load)
}

/// KubeVirt's `VirtualMachineInstanceFinalizer`.
pub use kubevirt_api::status::finalizer::VMI as VMI_FINALIZER;

fn transitions(
    vmi: &VirtualMachineInstance,
) -> Vec<VirtualMachineInstancePhaseTransitionTimestamp> {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase_transition_timestamps.clone())
        .unwrap_or_default()
}

fn transition(phase: VmiPhase, now: Timestamp) -> VirtualMachineInstancePhaseTransitionTimestamp {
    VirtualMachineInstancePhaseTransitionTimestamp {
        phase: Some(phase.into()),
        phase_transition_timestamp: Some(Time(now)),
    }
}

/// Whether the VMI waits for a node: new (phase empty or Pending), or Scheduling without one
/// (no node took it yet). A deleted VMI waits for nothing.
pub fn awaits_node(vmi: &VirtualMachineInstance) -> bool {
    let placed = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some();
    vmi.metadata.deletion_timestamp.is_none()
        && match phase::of(vmi) {
            None | Some(VmiPhase::Pending) => true,
            Some(VmiPhase::Scheduling) => !placed,
            _ => false,
        }
}

/// Reconciles one VMI: placement, the transition record, and the finalizer.
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&vmi.metadata)?;
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let name = vmi.name_any();
    let p = phase::of(&vmi);
    let now = Timestamp::now();
    let rv = vmi.metadata.resource_version.clone();
    let finalizers = vmi.finalizers().to_vec();

    if vmi.metadata.deletion_timestamp.is_some() {
        let released = phase::is_final(&vmi)
            || matches!(p, None | Some(VmiPhase::Pending | VmiPhase::Scheduling));
        if released && finalizers.iter().any(|f| f == VMI_FINALIZER) {
            let keep: Vec<&String> = finalizers.iter().filter(|f| *f != VMI_FINALIZER).collect();
            let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": keep}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        return Ok(Action::await_change());
    }

    if awaits_node(&vmi) {
        let (nodes, load) = nodes_and_load(&ctx).await?;
        let mut fins = finalizers.clone();
        if !fins.iter().any(|f| f == VMI_FINALIZER) {
            fins.push(VMI_FINALIZER.into());
        }
        let mut ts = transitions(&vmi);
        if p.is_none() {
            ts.push(transition(VmiPhase::Pending, now));
        }
        let mut conds = vmi
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let volumes = volumes_of(&ctx, &vmi).await?;
        let node = match scheduler::place(&vmi, &nodes, &load, &volumes) {
            Ok(node) => node.to_string(),
            Err(why) => {
                // kube-scheduler's verdict on the launcher Pod, as KubeVirt copies it to the
                // VMI: phase Scheduling, PodScheduled=False/Unschedulable. A Node change (or
                // the requeue) looks again.
                let message = why.to_string();
                let known = conds.iter().any(|c| {
                    c.r#type == condition::POD_SCHEDULED
                        && c.status == "False"
                        && c.message.as_deref() == Some(message.as_str())
                });
                // A missing claim holds the VMI before scheduling: KubeVirt creates no
                // launcher Pod, so the VMI stays Pending.
                // A VMI already Scheduling (its claim deleted since) stays so, as KubeVirt's
                // launcher Pod would.
                let missing = matches!(why.not_yet, Some(scheduler::NotYet::MissingClaim { .. }))
                    && matches!(p, None | Some(VmiPhase::Pending));
                let shown = if missing {
                    VmiPhase::Pending
                } else {
                    VmiPhase::Scheduling
                };
                if !known || p != Some(shown) {
                    if shown == VmiPhase::Scheduling && p != Some(VmiPhase::Scheduling) {
                        ts.push(transition(VmiPhase::Scheduling, now));
                    }
                    // The condition's status does not change with its message.
                    let since = conds
                        .iter()
                        .find(|c| c.r#type == condition::POD_SCHEDULED && c.status == "False")
                        .and_then(|c| c.last_transition_time.clone())
                        .unwrap_or(Time(now));
                    conds.retain(|c| c.r#type != condition::POD_SCHEDULED);
                    conds.retain(|c| !pvc_not_found(c));
                    conds.push(kubevirt_api::VirtualMachineInstanceCondition {
                        r#type: condition::POD_SCHEDULED.into(),
                        status: "False".into(),
                        reason: Some(reason::UNSCHEDULABLE.into()),
                        message: Some(message.clone()),
                        last_transition_time: Some(since.clone()),
                        last_probe_time: None,
                    });
                    // KubeVirt's sync error for a claim that is not there yet, which its VM
                    // shows as `ErrorPvcNotFound`.
                    if missing {
                        conds.push(kubevirt_api::VirtualMachineInstanceCondition {
                            r#type: condition::SYNCHRONIZED.into(),
                            status: "False".into(),
                            reason: Some(reason::FAILED_PVC_NOT_FOUND.into()),
                            message: Some(message.clone()),
                            last_transition_time: Some(since.clone()),
                            last_probe_time: None,
                        });
                    }
                    let patch = json!({
                        "metadata": {"resourceVersion": rv, "finalizers": fins},
                        "status": {
                            "phase": shown.as_str(),
                            "phaseTransitionTimestamps": ts,
                            "conditions": conds,
                        }
                    });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    tracing::info!(%ns, %name, %message, "VMI unschedulable");
                    let (kind, event_reason) = if missing {
                        (EventType::Normal, reason::FAILED_PVC_NOT_FOUND)
                    } else {
                        (EventType::Warning, "FailedScheduling")
                    };
                    ctx.event(vmi.as_ref(), kind, event_reason, message).await;
                }
                return Ok(Action::requeue(UNSCHEDULABLE_RETRY));
            }
        };
        if p != Some(VmiPhase::Scheduling) {
            ts.push(transition(VmiPhase::Scheduling, now));
        }
        ts.push(transition(VmiPhase::Scheduled, now));
        conds.retain(|c| c.r#type != condition::POD_SCHEDULED && !pvc_not_found(c));
        if !conds.iter().any(|c| c.r#type == condition::READY) {
            conds.push(kubevirt_api::VirtualMachineInstanceCondition {
                r#type: condition::READY.into(),
                status: "False".into(),
                reason: Some("GuestNotRunning".into()),
                message: Some("Guest VM is not reported as running".into()),
                last_transition_time: Some(Time(now)),
                last_probe_time: None,
            });
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": rv,
                "labels": {NODE_NAME_LABEL: node},
                "finalizers": fins,
            },
            "status": {
                "phase": VmiPhase::Scheduled.as_str(),
                "nodeName": node,
                "phaseTransitionTimestamps": ts,
                "conditions": conds,
            }
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(%ns, %name, %node, "VMI scheduled");
        return Ok(Action::await_change());
    }

    // Every phase gets its transition recorded, even when its writer did not record it, so
    // the VM controller can tell a start failure from a crash of a VMI that ran.
    let Some(p) = p else {
        return Ok(Action::await_change());
    };
    let mut ts = transitions(&vmi);
    if !ts.iter().any(|t| t.phase.as_deref() == Some(p.as_str())) {
        ts.push(transition(p, now));
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "status": {"phaseTransitionTimestamps": ts}
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::await_change())
}

pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(vmi = %vmi.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

const MI: i128 = 1024 * 1024;
/// Our launcher's own RSS budget: measured 6.1 MiB VmRSS while a VM runs
/// (crates/launcher/README.md), rounded up to the target it is held to.
const LAUNCHER_OVERHEAD: i128 = 10 * MI;
/// QEMU's own memory beyond guest RAM and page tables. KubeVirt budgets 30 Mi
/// (`QemuOverhead`, pkg/virt-controller/services/renderresources.go) next to libvirt; we add
/// 10 Mi for what libvirt would otherwise set up (QMP, chardevs, the firmware blobs).
const QEMU_OVERHEAD: i128 = 40 * MI;
/// Per vCPU (KubeVirt: "CPU table overhead", 8 Mi per vCPU): thread stacks and KVM state.
const PER_VCPU_OVERHEAD: i128 = 8 * MI;
/// Per I/O thread (KubeVirt: 8 Mi), counted when `ioThreadsPolicy` is set.
const IOTHREAD_OVERHEAD: i128 = 8 * MI;
/// Video RAM and the VNC server when a graphics device is attached (KubeVirt: 32 Mi).
const VIDEO_OVERHEAD: i128 = 32 * MI;

/// The guest's memory: `memory.guest`, else the memory request, else the limit.
fn guest_memory(vmi: &VirtualMachineInstance) -> Option<Quantity> {
    let d = &vmi.spec.domain;
    let from = |q: Option<&K8sQuantity>| q.and_then(|q| Quantity::from_k8s(q).ok());
    from(d.memory.as_ref().and_then(|m| m.guest.as_ref()))
        .or_else(|| {
            from(
                d.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("memory")),
            )
        })
        .or_else(|| {
            from(
                d.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|r| r.get("memory")),
            )
        })
}

fn vcpus(vmi: &VirtualMachineInstance) -> i128 {
    let cpu = vmi.spec.domain.cpu.as_ref();
    let n = |v: Option<i64>| i128::from(v.filter(|v| *v > 0).unwrap_or(1));
    n(cpu.and_then(|c| c.sockets)) * n(cpu.and_then(|c| c.cores)) * n(cpu.and_then(|c| c.threads))
}

/// The memory a launcher Pod needs beyond the guest's RAM. Based on KubeVirt's
/// `GetMemoryOverhead` (pkg/virt-controller/services/renderresources.go), with its process
/// terms replaced by ours: no virt-launcher-monitor (25 Mi), virtlogd (25 Mi) or virtqemud
/// (40 Mi), and our launcher at 10 Mi instead of virt-launcher's 100 Mi.
///
/// ```text
/// overhead = guest/512                 page tables (KubeVirt: one bit per 512 B of RAM)
///          + 10 Mi                     launcher process
///          + 40 Mi                     QEMU itself
///          + 8 Mi × vCPUs              sockets × cores × threads
///          + 8 Mi                      if ioThreadsPolicy is set
///          + 32 Mi                     if a graphics device is attached (the default)
/// ```
/// A 1-vCPU, 64 Mi guest without graphics needs 58 Mi + 128 Ki.
pub fn launcher_memory_overhead(vmi: &VirtualMachineInstance) -> K8sQuantity {
    let guest = guest_memory(vmi).map(|q| q.value()).unwrap_or(0);
    let mut total =
        guest / 512 + LAUNCHER_OVERHEAD + QEMU_OVERHEAD + PER_VCPU_OVERHEAD * vcpus(vmi);
    if vmi.spec.domain.io_threads_policy.is_some() {
        total += IOTHREAD_OVERHEAD;
    }
    if vmi.spec.domain.devices.autoattach_graphics_device != Some(false) {
        total += VIDEO_OVERHEAD;
    }
    K8sQuantity(format_bytes(total))
}

/// Bytes as a Kubernetes quantity: `Mi` or `Ki` when exact, plain bytes otherwise.
fn format_bytes(b: i128) -> String {
    if b % MI == 0 {
        format!("{}Mi", b / MI)
    } else if b % 1024 == 0 {
        format!("{}Ki", b / 1024)
    } else {
        b.to_string()
    }
}

/// What a cluster-mode launcher Pod is built from besides the VMI.
#[derive(Clone, Debug)]
pub struct LauncherPodConfig {
    /// The image holding `kubevirt-rs` (the launcher is one of its subcommands).
    pub image: String,
}

/// The launcher Pod for a VMI in cluster mode, KubeVirt-style: `virt-launcher-<vmi>-` as
/// generateName, KubeVirt's labels, memory request = guest + [`launcher_memory_overhead`].
/// Single-node mode never creates it (the handler spawns the launcher directly).
pub fn launcher_pod(vmi: &VirtualMachineInstance, cfg: &LauncherPodConfig) -> Pod {
    let name = vmi.name_any();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = vmi.labels().clone();
    labels.insert("kubevirt.io".into(), "virt-launcher".into());
    labels.insert("kubevirt.io/created-by".into(), uid);
    labels.insert("vm.kubevirt.io/name".into(), name.clone());
    let annotations = BTreeMap::from([("kubevirt.io/domain".to_string(), name.clone())]);

    let overhead = Quantity::from_k8s(&launcher_memory_overhead(vmi))
        .map(|q| q.value())
        .unwrap_or(0);
    let guest = guest_memory(vmi).map(|q| q.value()).unwrap_or(0);
    let res = vmi.spec.domain.resources.as_ref();
    let mut requests = res.and_then(|r| r.requests.clone()).unwrap_or_default();
    requests.insert("memory".into(), K8sQuantity(format_bytes(guest + overhead)));
    let mut limits = res.and_then(|r| r.limits.clone()).unwrap_or_default();
    if let Some(l) = limits
        .get("memory")
        .and_then(|q| Quantity::from_k8s(q).ok())
    {
        limits.insert(
            "memory".into(),
            K8sQuantity(format_bytes(l.value() + overhead)),
        );
    }
    let grace = vmi
        .spec
        .termination_grace_period_seconds
        .unwrap_or(kubevirt_api::defaults::DEFAULT_GRACE_PERIOD_SECONDS);
    // KubeVirt's `getPortsFromVMI`: the ports the interfaces declare are the compute
    // container's, so a Service's named `targetPort` finds them.
    let ports: Vec<ContainerPort> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .flatten()
        .flat_map(|i| i.ports.iter().flatten())
        .map(|p| ContainerPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            container_port: p.port,
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            ..Default::default()
        })
        .collect();
    let mut node_selector = vmi.spec.node_selector.clone().unwrap_or_default();
    node_selector.insert("kubevirt.io/schedulable".into(), "true".into());

    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace: vmi.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: vmi.controller_owner_ref(&()).map(|mut o| {
                o.block_owner_deletion = Some(true);
                vec![o]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            // KubeVirt gives the Pod 15 s more than the guest to shut down.
            termination_grace_period_seconds: Some(grace + 15),
            node_selector: Some(node_selector),
            scheduler_name: vmi.spec.scheduler_name.clone(),
            hostname: vmi.spec.hostname.clone().or_else(|| Some(name.clone())),
            subdomain: vmi.spec.subdomain.clone(),
            containers: vec![Container {
                name: "compute".into(),
                image: Some(cfg.image.clone()),
                command: Some(vec![
                    "kubevirt-rs".into(),
                    "launcher".into(),
                    "run".into(),
                    "-f".into(),
                    "/var/run/kubevirt-private/vmi.json".into(),
                    "--dir".into(),
                    "/var/run/kubevirt/vmi".into(),
                ]),
                ports: (!ports.is_empty()).then_some(ports),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: (!limits.is_empty()).then_some(limits),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![VolumeMount {
                    name: "private".into(),
                    mount_path: "/var/run/kubevirt-private".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "private".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(v: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(v).expect("vmi")
    }

    #[test]
    fn overhead_formula() {
        let small = vmi(json!({"metadata": {"name": "a"}, "spec": {"domain": {
            "devices": {"autoattachGraphicsDevice": false}, "memory": {"guest": "64Mi"}}}}));
        // 64Mi/512 = 128Ki; 10 + 40 + 8 Mi.
        assert_eq!(
            launcher_memory_overhead(&small).0,
            format!("{}Ki", 58 * 1024 + 128)
        );

        let big = vmi(json!({"metadata": {"name": "b"}, "spec": {"domain": {
            "devices": {}, "memory": {"guest": "2Gi"},
            "cpu": {"sockets": 2, "cores": 2, "threads": 1},
            "ioThreadsPolicy": "shared"}}}));
        // 4Mi page tables + 10 + 40 + 4×8 + 8 (iothread) + 32 (video).
        assert_eq!(launcher_memory_overhead(&big).0, "126Mi");

        let from_request = vmi(json!({"metadata": {"name": "c"}, "spec": {"domain": {
            "devices": {}, "resources": {"requests": {"memory": "1Gi"}}}}}));
        assert_eq!(launcher_memory_overhead(&from_request).0, "92Mi");
    }

    #[test]
    fn launcher_pod_is_rendered_kubevirt_style() {
        let v = vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"domain": {"devices": {"autoattachGraphicsDevice": false},
                                "memory": {"guest": "128Mi"},
                                "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "256Mi"}}},
                     "nodeSelector": {"disk": "ssd"}, "terminationGracePeriodSeconds": 10}
        }));
        let pod = launcher_pod(
            &v,
            &LauncherPodConfig {
                image: "kubevirt-rs:dev".into(),
            },
        );
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some("virt-launcher-demo-")
        );
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("kubevirt.io").map(String::as_str),
            Some("virt-launcher")
        );
        assert_eq!(
            labels.get("kubevirt.io/created-by").map(String::as_str),
            Some("u-1")
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VirtualMachineInstance", "u-1", Some(true))
        );
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.termination_grace_period_seconds, Some(25));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let sel = spec.node_selector.unwrap_or_default();
        assert_eq!(sel.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(
            sel.get("kubevirt.io/schedulable").map(String::as_str),
            Some("true")
        );
        let c = &spec.containers[0];
        assert_eq!(c.name, "compute");
        let res = c.resources.clone().expect("resources");
        let req = res.requests.unwrap_or_default();
        // 128Mi + (256Ki page tables + 10 + 40 + 8 Mi).
        assert_eq!(req.get("memory").map(|q| q.0.as_str()), Some("190720Ki"));
        assert_eq!(req.get("cpu").map(|q| q.0.as_str()), Some("500m"));
        let lim = res.limits.unwrap_or_default();
        assert_eq!(lim.get("memory").map(|q| q.0.as_str()), Some("321792Ki"));
    }
}
