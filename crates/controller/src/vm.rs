//! The VirtualMachine controller: one VMI per VM, started and stopped as `runStrategy` and
//! `status.stateChangeRequests` say, with KubeVirt's crash-loop backoff, and the VM's status
//! (`printableStatus`, conditions, `startFailure`...) written through `/status`.
//!
//! Source of the rules: KubeVirt `pkg/virt-controller/watch/vm/vm.go` (`syncRunStrategy`,
//! `setPrintableStatus`, `syncStartFailureStatus`); summarised in
//! `notes/kubevirt-api-facts.md` §4.
//!
//! Deletion ordering (KubeVirt's `sync`): every VM that is not being deleted carries the
//! [`VM_FINALIZER`]. A deleted VM has its VMI deleted and keeps the finalizer until that VMI
//! is gone; the VMI in turn keeps its own finalizer until the handler reports its QEMU gone
//! (see [`crate::vmi`]). So a client waiting for the VM to go (`kubectl delete vm`) returns
//! only after the VMI and its QEMU are gone. A deletion with orphan propagation
//! (`--cascade=orphan`) leaves the VMI running and releases the VM at once. KubeVirt never
//! removes the finalizer from a VM that is not being deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kubevirt_api::{
    VirtualMachine, VirtualMachineCondition, VirtualMachineInstance, VirtualMachineSpec,
    VirtualMachineStartFailure, VirtualMachineStateChangeRequest, VirtualMachineStatus,
};
use kubevirt_runtime::status::{transition_time, Previous};

use crate::phase;
use crate::{instancetype, Context, Error};
use kubevirt_api::status::{condition, VmiPhase};

/// The VM generation a VMI was created from (`kubevirt.io/vm-generation`).
pub use kubevirt_api::status::label::VM_GENERATION as VM_GENERATION_ANNOTATION;
/// KubeVirt's label on a VMI created from a VM (`virtv1.VirtualMachineLabel`).
pub use kubevirt_api::status::label::VM_NAME as VM_NAME_LABEL;

pub use kubevirt_api::status::RunStrategy;

use kubevirt_api::status::finalizer::ORPHAN_DEPENDENTS;
/// KubeVirt's `VirtualMachineControllerFinalizer`, on every VM this controller reconciles.
pub use kubevirt_api::status::finalizer::VM_CONTROLLER as VM_FINALIZER;

/// The strategies a start failure counts for (others clear `startFailure`).
fn backs_off(strategy: RunStrategy) -> bool {
    matches!(
        strategy,
        RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once
    )
}

/// KubeVirt's `vm.RunStrategy()` ([`RunStrategy::of`]).
pub fn run_strategy(spec: &VirtualMachineSpec) -> RunStrategy {
    RunStrategy::of(spec)
}

/// One step towards what the VM asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Create,
    /// Create, but not before the crash-loop backoff has passed.
    CreateAfter(Duration),
    /// Delete the VMI; `restart` adds a Start request (RerunOnFailure after a failure).
    Delete {
        restart: bool,
    },
}

const START: &str = "Start";
const STOP: &str = "Stop";

fn first_request(vm_status: &VirtualMachineStatus) -> Option<&VirtualMachineStateChangeRequest> {
    vm_status
        .state_change_requests
        .as_ref()
        .and_then(|r| r.first())
}

fn has_start_request(st: &VirtualMachineStatus) -> bool {
    first_request(st).is_some_and(|r| r.action == START)
}

/// A Stop request for this VMI: the first request is Stop with no uid or the VMI's uid.
fn has_stop_request_for(st: &VirtualMachineStatus, vmi: &VirtualMachineInstance) -> bool {
    first_request(st).is_some_and(|r| {
        r.action == STOP && (r.uid.is_none() || r.uid.as_deref() == vmi.metadata.uid.as_deref())
    })
}

/// What to do with the VM's [`VM_FINALIZER`] (KubeVirt's `sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerStep {
    /// Leave the finalizers as they are.
    Keep,
    /// A VM that is not being deleted and lacks the finalizer gets it.
    Add,
    /// A deleted VM whose VMI is gone (or is orphaned) is released.
    Remove,
}

fn has_finalizer(vm: &VirtualMachine, f: &str) -> bool {
    vm.finalizers().iter().any(|x| x == f)
}

/// Whether the VM's deletion orphans its dependents (`propagationPolicy: Orphan`: the API
/// server marks the VM with the `orphan` finalizer).
pub fn orphans_dependents(vm: &VirtualMachine) -> bool {
    has_finalizer(vm, ORPHAN_DEPENDENTS)
}

/// The finalizer step for `vm`, given the VMI it controls (`None`: no VMI, or one it does not
/// control).
pub fn finalizer_step(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> FinalizerStep {
    let has = has_finalizer(vm, VM_FINALIZER);
    if vm.metadata.deletion_timestamp.is_none() {
        return if has {
            FinalizerStep::Keep
        } else {
            FinalizerStep::Add
        };
    }
    if has && (vmi.is_none() || orphans_dependents(vm)) {
        FinalizerStep::Remove
    } else {
        FinalizerStep::Keep
    }
}

/// The step a deleted VM takes towards its VMI: delete it unless it is already being deleted,
/// or the deletion orphans it (KubeVirt's `stopVMI` from `sync`).
pub fn decide_deleted(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Decision {
    match vmi {
        Some(v) if v.metadata.deletion_timestamp.is_none() && !orphans_dependents(vm) => {
            Decision::Delete { restart: false }
        }
        _ => Decision::Nothing,
    }
}

/// The merge patch that takes `step` on the VM's finalizers (`None` for [`FinalizerStep::Keep`]),
/// guarded by the VM's resourceVersion (KubeVirt guards with a JSON-patch `test` of the old
/// list): a finalizer someone else added meanwhile is never dropped, the conflict re-reads.
pub fn finalizers_patch(vm: &VirtualMachine, step: FinalizerStep) -> Option<serde_json::Value> {
    let mut fins = vm.finalizers().to_vec();
    match step {
        FinalizerStep::Keep => return None,
        FinalizerStep::Add => fins.push(VM_FINALIZER.to_string()),
        FinalizerStep::Remove => fins.retain(|f| f != VM_FINALIZER),
    }
    Some(serde_json::json!({
        "metadata": {"resourceVersion": vm.metadata.resource_version, "finalizers": fins}
    }))
}

/// KubeVirt's `syncRunStrategy` as a pure function of the VM's status (requests, last
/// observed runStrategy, start failure), the VMI and the time.
pub fn decide(
    strategy: RunStrategy,
    status: &VirtualMachineStatus,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
) -> Decision {
    let create = || match retry_after(status) {
        Some(at) if at > now => {
            Decision::CreateAfter(Duration::try_from(at.duration_since(now)).unwrap_or_default())
        }
        _ => Decision::Create,
    };
    let live = vmi.filter(|v| v.metadata.deletion_timestamp.is_none());
    let stop_for = |v: &VirtualMachineInstance| has_stop_request_for(status, v);
    // The strategy the last sync saw: a switch into RerunOnFailure starts the VM.
    let switched = status.run_strategy.as_deref() != Some(strategy.as_str());
    let stop_pending = first_request(status).is_some_and(|r| r.action == STOP);
    match strategy {
        RunStrategy::Halted => match live {
            Some(_) => Decision::Delete { restart: false },
            None => Decision::Nothing,
        },
        RunStrategy::Always => match vmi {
            Some(v) => match live {
                Some(_) if phase::is_final(v) || stop_for(v) => Decision::Delete { restart: false },
                _ => Decision::Nothing,
            },
            None if stop_pending => Decision::Nothing,
            None => create(),
        },
        RunStrategy::RerunOnFailure => match vmi {
            Some(v) => match live {
                Some(_) if stop_for(v) => Decision::Delete { restart: false },
                Some(_) if phase::is(v, VmiPhase::Failed) => Decision::Delete { restart: true },
                Some(_) if phase::is(v, VmiPhase::Succeeded) => Decision::Delete { restart: false },
                _ => Decision::Nothing,
            },
            None if stop_pending => Decision::Nothing,
            None if has_start_request(status) || switched => create(),
            None => Decision::Nothing,
        },
        RunStrategy::Manual => match vmi {
            Some(v) => match live {
                Some(_) if stop_for(v) => Decision::Delete { restart: false },
                _ => Decision::Nothing,
            },
            None if has_start_request(status) => Decision::Create,
            None => Decision::Nothing,
        },
        RunStrategy::Once => match vmi {
            Some(_) => Decision::Nothing,
            None if stop_pending => Decision::Nothing,
            None => create(),
        },
    }
}

fn retry_after(status: &VirtualMachineStatus) -> Option<Timestamp> {
    let sf = status.start_failure.as_ref()?;
    if sf.consecutive_fail_count.unwrap_or(0) <= 0 {
        return None;
    }
    sf.retry_after_timestamp.as_ref().map(|t| t.0)
}

/// KubeVirt's `syncStartFailureStatus`: a VMI that failed without ever running counts once
/// (keyed by its uid), a running VMI clears the count, and strategies that never restart
/// carry no count.
pub fn sync_start_failure(
    status: &mut VirtualMachineStatus,
    strategy: RunStrategy,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
    backoff: &kubevirt_runtime::backoff::Backoff,
) {
    if !backs_off(strategy) {
        status.start_failure = None;
        return;
    }
    let Some(vmi) = vmi else { return };
    if phase::is(vmi, VmiPhase::Running) {
        status.start_failure = None;
        return;
    }
    if !phase::is(vmi, VmiPhase::Failed) || phase::ever_ran(vmi) {
        return;
    }
    let uid = vmi.metadata.uid.clone();
    let prev = status.start_failure.clone().unwrap_or_default();
    if prev.last_failed_vmiuid.is_some() && prev.last_failed_vmiuid == uid {
        return;
    }
    let count = prev.consecutive_fail_count.unwrap_or(0).max(0) + 1;
    let delay = backoff.delay(u32::try_from(count).unwrap_or(u32::MAX));
    let retry = now
        .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(now);
    status.start_failure = Some(VirtualMachineStartFailure {
        consecutive_fail_count: Some(count),
        last_failed_vmiuid: uid,
        retry_after_timestamp: Some(Time(retry)),
    });
}

/// What `printableStatus` is computed from.
pub struct PrintableInputs<'a> {
    pub vm_deleting: bool,
    pub vmi: Option<&'a VirtualMachineInstance>,
    /// The controller is about to create a VMI (or just did and has not seen it yet).
    pub create_expected: bool,
    /// The controller asked for the VMI's deletion.
    pub delete_expected: bool,
    pub start_failures: i32,
    pub strategy: RunStrategy,
}

/// KubeVirt's `setPrintableStatus` precedence (facts §4). DataVolume/PVC rows are not
/// evaluated yet (no CDI controller); every row that only reads the VMI is.
pub fn printable_status(i: &PrintableInputs) -> &'static str {
    let vmi = i.vmi;
    let final_ = vmi.is_some_and(phase::is_final);
    let synchronized_false = |reason: &str| {
        vmi.and_then(|v| phase::condition(v, "Synchronized"))
            .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some(reason))
    };
    if i.vm_deleting {
        return "Terminating";
    }
    if let Some(v) = vmi {
        if !final_ && (v.metadata.deletion_timestamp.is_some() || i.delete_expected) {
            return "Stopping";
        }
        let migrating = v
            .status
            .as_ref()
            .and_then(|s| s.migration_state.as_ref())
            .is_some_and(|m| m.start_timestamp.is_some() && m.end_timestamp.is_none());
        if migrating {
            return "Migrating";
        }
        if phase::is(v, VmiPhase::Running) {
            return if phase::vmi_condition_true(v, condition::PAUSED) {
                "Paused"
            } else {
                "Running"
            };
        }
    }
    if synchronized_false(kubevirt_api::status::reason::FAILED_PVC_NOT_FOUND) {
        return "ErrorPvcNotFound";
    }
    let unschedulable = vmi
        .and_then(|v| phase::condition(v, condition::POD_SCHEDULED))
        .is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some(kubevirt_api::status::reason::UNSCHEDULABLE)
        });
    if unschedulable {
        return "ErrorUnschedulable";
    }
    if synchronized_false("ErrImagePull") {
        return "ErrImagePull";
    }
    if synchronized_false("ImagePullBackOff") {
        return "ImagePullBackOff";
    }
    let starting = match vmi {
        None => i.create_expected,
        Some(v) => matches!(
            phase::of(v),
            None | Some(VmiPhase::Pending | VmiPhase::Scheduling | VmiPhase::Scheduled)
        ),
    };
    if starting {
        return "Starting";
    }
    if (vmi.is_none() || final_)
        && !i.create_expected
        && i.start_failures > 0
        && backs_off(i.strategy)
    {
        return "CrashLoopBackOff";
    }
    if final_ || (vmi.is_none() && !i.create_expected) {
        return "Stopped";
    }
    "Unknown"
}

/// Removes the requests that are done: a Stop once its VMI is gone, a Start once a VMI runs
/// (or cannot: Halted).
pub fn trim_requests(
    requests: &mut Vec<VirtualMachineStateChangeRequest>,
    vmi: Option<&VirtualMachineInstance>,
    strategy: RunStrategy,
) {
    loop {
        let done = match requests.first() {
            Some(r) if r.action == STOP => match vmi {
                None => true,
                Some(v) => r.uid.is_some() && r.uid.as_deref() != v.metadata.uid.as_deref(),
            },
            Some(r) if r.action == START => {
                strategy == RunStrategy::Halted
                    || vmi.is_some_and(|v| {
                        v.metadata.deletion_timestamp.is_none() && !phase::is_final(v)
                    })
            }
            Some(_) => true, // unknown actions are dropped, as KubeVirt does not know them either
            None => false,
        };
        if !done {
            return;
        }
        requests.remove(0);
    }
}

/// Where a VM's VMI spec lives, for the paths of instancetype conflicts.
fn template_spec_path() -> kubevirt_api::field::Path {
    kubevirt_api::field::Path::root("spec")
        .child("template")
        .child("spec")
}

/// The VMI a VM asks for: the template's metadata and spec, owned by the VM, with KubeVirt's
/// VM label, a stable firmware UUID, instancetype/preference expanded, then defaulted.
pub fn vmi_for(
    vm: &VirtualMachine,
    it: Option<&kubevirt_api::VirtualMachineInstancetypeSpec>,
    pref: Option<&kubevirt_api::VirtualMachinePreferenceSpec>,
    defaults: &kubevirt_api::defaults::DefaultsConfig,
) -> Result<VirtualMachineInstance, Error> {
    let name = crate::name_of(&vm.metadata)?;
    let mut owner = vm
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    owner.block_owner_deletion = Some(true);
    let tmpl = vm.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmpl.labels.unwrap_or_default();
    labels.insert(VM_NAME_LABEL.into(), name.clone());
    let mut annotations: BTreeMap<String, String> = tmpl.annotations.unwrap_or_default();
    let mut spec = vm.spec.template.spec.clone().unwrap_or_default();
    kubevirt_api::instancetype::apply(
        &template_spec_path(),
        it,
        pref,
        &mut spec,
        &mut annotations,
    )?;
    if let Some(g) = vm.metadata.generation {
        annotations.insert(VM_GENERATION_ANNOTATION.into(), g.to_string());
    }
    let fw = spec.domain.firmware.get_or_insert_with(Default::default);
    if fw.uuid.as_deref().unwrap_or("").is_empty() {
        fw.uuid = Some(kubevirt_api::defaults::firmware_uuid(&name));
    }
    let mut vmi = VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    kubevirt_api::defaults::default_vmi(&mut vmi, defaults);
    Ok(vmi)
}

/// Takes the memory snapshot reference off VM `name` (it was used).
async fn strip_memory_reference(vms: &Api<VirtualMachine>, name: &str) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        kubevirt_api::memsnap::RESTORE: null}}});
    vms.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The VMI of a VM restored from a memory snapshot: the reference (the node agent starts it
/// from that memory, or fails it saying why), pinned to the node holding the memory.
pub fn with_memory(vmi: &mut VirtualMachineInstance, reference: &str) {
    use kubevirt_api::memsnap;
    vmi.annotations_mut()
        .insert(memsnap::RESTORE.into(), reference.to_string());
    if let Ok(r) = memsnap::MemoryRef::parse(reference) {
        vmi.spec
            .node_selector
            .get_or_insert_with(Default::default)
            .insert(kubevirt_api::status::label::HOSTNAME.into(), r.node);
    }
}

fn controlled_by(vmi: &VirtualMachineInstance, vm: &VirtualMachine) -> bool {
    vmi.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == vm.metadata.uid.as_ref())
}

/// Sets the condition `type_`; its `lastTransitionTime` changes only with its status
/// ([`transition_time`]).
fn set_condition(
    conds: &mut Vec<VirtualMachineCondition>,
    type_: &str,
    status: &str,
    reason: Option<String>,
    message: Option<String>,
    now: Timestamp,
) {
    let old = conds.iter().position(|c| c.r#type == type_);
    let previous = conds.iter().map(|c| Previous {
        type_: &c.r#type,
        status: &c.status,
        since: c.last_transition_time.clone(),
    });
    let last_transition = Some(transition_time(previous, type_, status, Time(now)));
    let cond = VirtualMachineCondition {
        r#type: type_.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time: last_transition,
        last_probe_time: None,
    };
    match old {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

/// The VM's status conditions from its VMI: Ready (copied from the VMI's), Paused, Failure.
fn sync_conditions(
    conds: &mut Vec<VirtualMachineCondition>,
    vmi: Option<&VirtualMachineInstance>,
    failure: Option<(&str, String)>,
    now: Timestamp,
) {
    match vmi {
        None => set_condition(
            conds,
            "Ready",
            "False",
            Some("VMINotExists".into()),
            Some("VMI does not exist".into()),
            now,
        ),
        Some(v) => match phase::condition(v, condition::READY) {
            Some(c) if !phase::is_final(v) => set_condition(
                conds,
                "Ready",
                &c.status,
                c.reason.clone(),
                c.message.clone(),
                now,
            ),
            _ => set_condition(
                conds,
                "Ready",
                "False",
                Some("VMIConditionMissing".into()),
                Some("VMI is missing the Ready condition".into()),
                now,
            ),
        },
    }
    match vmi.and_then(|v| phase::condition(v, condition::PAUSED)) {
        Some(c) if c.status == "True" => set_condition(
            conds,
            "Paused",
            "True",
            c.reason.clone(),
            c.message.clone(),
            now,
        ),
        _ => conds.retain(|c| c.r#type != "Paused"),
    }
    match failure {
        Some((reason, msg)) => set_condition(
            conds,
            "Failure",
            "True",
            Some(reason.into()),
            Some(msg),
            now,
        ),
        None if vmi.is_some_and(|v| !phase::is_final(v)) => conds.retain(|c| c.r#type != "Failure"),
        None => {}
    }
}

/// Whether a snapshot or a restore holds the VM, and the reason and message to show: KubeVirt
/// refuses at admission to change a VM's running state while `status.snapshotInProgress`
/// or `status.restoreInProgress` is set (`Cannot update vm running state until snapshot %q
/// completes`, `Cannot start VM until restore %q completes`); a start that does not go
/// through a spec update (a Manual VM's start request is a status write, an Always VM whose
/// VMI went away) must not create a VMI either, or an offline snapshot would copy a disk in
/// use and a restore would replace the disks under a running guest.
pub fn held_by(status: &VirtualMachineStatus) -> Option<(&'static str, String)> {
    if let Some(s) = status.snapshot_in_progress.as_deref() {
        return Some((
            "SnapshotInProgress",
            format!("Cannot start VM until snapshot {s:?} completes"),
        ));
    }
    if let Some(r) = status.restore_in_progress.as_deref() {
        return Some((
            "RestoreInProgress",
            format!("Cannot start VM until restore {r:?} completes"),
        ));
    }
    None
}

/// Reconciles one VirtualMachine.
pub async fn reconcile(mut vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = crate::namespace_of(&vm.metadata)?;
    let name = vm.name_any();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);

    let mut vmi = vmis.get_opt(&name).await?;
    let deleting = vm.metadata.deletion_timestamp.is_some();
    if let Some(v) = &vmi {
        if !controlled_by(v, &vm) {
            // A VMI of the same name that this VM does not own: never touch it. A deleted VM
            // does not wait for it either (it may be the VMI an orphaning deletion released).
            if !deleting {
                tracing::warn!(%ns, %name, "a VMI with the VM's name is not controlled by it");
                return Ok(Action::requeue(ctx.config.resync));
            }
            vmi = None;
        }
    }
    let step = finalizer_step(&vm, vmi.as_ref());
    if let Some(patch) = finalizers_patch(&vm, step) {
        match vms
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(patched) if step == FinalizerStep::Add => vm = Arc::new(patched),
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 && step == FinalizerStep::Remove => {}
            Err(e) => return Err(e.into()),
        }
        if step == FinalizerStep::Remove {
            // Released: the VM goes once its other finalizers (the API server's) are done.
            tracing::debug!(%ns, %name, "VM finalizer removed");
            return Ok(Action::await_change());
        }
    }
    let strategy = run_strategy(&vm.spec);
    let now = Timestamp::now();
    let old_status = vm.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    sync_start_failure(
        &mut status,
        strategy,
        vmi.as_ref(),
        now,
        &ctx.config.crash_loop,
    );

    let mut create_expected = false;
    let mut delete_expected = false;
    let mut failure: Option<(&str, String)> = None;
    let mut requeue = ctx.config.resync;

    let decision = if deleting {
        // Waiting for the VMI to go: its removal triggers this VM through the watch; the
        // short requeue is a fallback only.
        requeue = requeue.min(Duration::from_secs(2));
        decide_deleted(&vm, vmi.as_ref())
    } else {
        decide(strategy, &status, vmi.as_ref(), now)
    };
    // Copies of the instancetype and preference, taken once: the VM keeps its size when they
    // change. A failure here shows up when the VMI is made (fetch reads the same objects).
    if !deleting {
        if let Err(e) = instancetype::sync_revisions(&ctx.client, &vm, &ns, &mut status).await {
            tracing::warn!(%ns, %name, error = %e, "cannot store the instancetype/preference revision");
        }
    }
    // dataVolumeTemplates: create the DataVolumes; a VMI is created only once they are ready.
    let volumes = if !deleting {
        sync_data_volumes(&ctx, &vm, &ns).await?
    } else {
        VolumesState::default()
    };
    let set_to_start = matches!(decision, Decision::Create | Decision::CreateAfter(_));
    let decision = match decision {
        Decision::Create if !volumes.ready() => {
            requeue = Duration::from_secs(1);
            Decision::Nothing
        }
        d => d,
    };
    // A snapshot or restore holds the VM: no VMI while it does (see `held_by`).
    let held = held_by(&status);
    let decision = match decision {
        Decision::Create | Decision::CreateAfter(_) if held.is_some() => {
            requeue = requeue.min(Duration::from_secs(2));
            Decision::Nothing
        }
        d => d,
    };
    if let Some((reason, msg)) = &held {
        if set_to_start {
            let first = !status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.r#type == "Failure" && c.message.as_deref() == Some(msg.as_str()));
            if first {
                ctx.event(vm.as_ref(), EventType::Warning, reason, msg.clone())
                    .await;
            }
            failure = Some((*reason, msg.clone()));
        }
    }
    // The VM comes from the watch cache, which may not have seen this controller's own last
    // status write yet. Creating from a stale status would skip a backoff it set; deleting a
    // failed VMI from a stale status loses the failure it counts (the status write then
    // conflicts, and the VMI that proved the failure is gone). Act only on the VM as stored.
    if matches!(decision, Decision::Create | Decision::Delete { .. }) {
        let stored = vms.get(&name).await?;
        if stored.metadata.resource_version != vm.metadata.resource_version {
            tracing::debug!(%ns, %name, "VM cache is behind; looking again before acting");
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
    }
    // A VMI created with the VM's memory reference (a crash came before the VM lost it):
    // the reference has been used.
    if let (Some(m), Some(v)) = (vm.annotations().get(kubevirt_api::memsnap::RESTORE), &vmi) {
        if v.annotations().get(kubevirt_api::memsnap::RESTORE) == Some(m) {
            strip_memory_reference(&vms, &name).await?;
        }
    }
    match decision {
        Decision::Nothing => {}
        Decision::CreateAfter(d) => requeue = requeue.min(d + Duration::from_millis(50)),
        Decision::Create => {
            // A restored memory snapshot is honoured once: the VMI created carries the
            // reference, and it is then taken off the VM (below, and on any later pass that
            // finds the VMI carrying it), so a later start boots. Taken off only after the
            // create, so a failed create or a crash before it keeps it for the next try.
            let memory = vm
                .annotations()
                .get(kubevirt_api::memsnap::RESTORE)
                .cloned();
            let cluster = ctx.config.cluster.borrow().clone();
            let made = match instancetype::fetch(&ctx.client, &vm, &status, &ns).await {
                Ok((it, pref)) => vmi_for(&vm, it.as_ref(), pref.as_ref(), &cluster.defaults())
                    .map(|mut new| {
                        live_update::prepare_vmi(&mut new, &vm, &cluster);
                        // `virtctl start --paused`: a Start request with `paused: "true"`.
                        if first_request(&status).is_some_and(|r| {
                            r.action == START
                                && r.data
                                    .as_ref()
                                    .and_then(|d| d.get("paused"))
                                    .map(String::as_str)
                                    == Some("true")
                        }) {
                            new.spec.start_strategy = Some("Paused".into());
                        }
                        if let Some(m) = &memory {
                            with_memory(&mut new, m);
                        }
                        new
                    }),
                Err(e) => Err(e),
            };
            let created = match made {
                Ok(new) => vmis
                    .create(&PostParams::default(), &new)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            match created {
                Ok(v) => {
                    if memory.is_some() {
                        strip_memory_reference(&vms, &name).await?;
                    }
                    ctx.event(
                        vm.as_ref(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Started the virtual machine by creating the new virtual machine instance {name}"),
                    )
                    .await;
                    vmi = Some(v);
                }
                Err(e) => {
                    let msg = format!("Error creating virtual machine instance: {e}");
                    ctx.event(vm.as_ref(), EventType::Warning, "FailedCreate", msg.clone())
                        .await;
                    failure = Some(("FailedCreate", msg));
                    create_expected = true;
                    requeue = Duration::from_secs(5);
                }
            }
        }
        Decision::Delete { restart } => {
            if let Some(v) = &vmi {
                let uid = v.metadata.uid.clone();
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match vmis.delete(&name, &dp).await {
                    Ok(_) => {
                        ctx.event(
                            vm.as_ref(),
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!(
                                "Stopped the virtual machine by deleting the virtual machine instance {}",
                                uid.unwrap_or_default()
                            ),
                        )
                        .await;
                        delete_expected = true;
                        if restart {
                            status
                                .state_change_requests
                                .get_or_insert_with(Vec::new)
                                .push(VirtualMachineStateChangeRequest {
                                    action: START.into(),
                                    data: None,
                                    uid: None,
                                });
                        }
                        vmi = vmis.get_opt(&name).await?;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => vmi = None,
                    Err(e) => {
                        let msg = format!("Error deleting virtual machine instance: {e}");
                        ctx.event(vm.as_ref(), EventType::Warning, "FailedDelete", msg.clone())
                            .await;
                        failure = Some(("FailedDelete", msg));
                        requeue = Duration::from_secs(5);
                    }
                }
            }
        }
    }

    if !deleting {
        if let Some(v) = &vmi {
            sync_hotplug_volumes(&vmis, &vm, v).await;
        }
    }

    // LiveUpdate: CPU sockets and guest memory follow the template; other changes wait for a
    // restart (the RestartRequired condition).
    let mut restart_required = None;
    if let Some(v) = vmi
        .as_ref()
        .filter(|v| !deleting && v.metadata.deletion_timestamp.is_none() && !phase::is_final(v))
    {
        let raw = vm.spec.template.spec.clone().unwrap_or_default();
        let mut template = raw.clone();
        if vm.spec.instancetype.is_some() || vm.spec.preference.is_some() {
            let (it, pref) = instancetype::fetch(&ctx.client, &vm, &status, &ns).await?;
            kubevirt_api::instancetype::apply(
                &template_spec_path(),
                it.as_ref(),
                pref.as_ref(),
                &mut template,
                &mut BTreeMap::new(),
            )?;
        }
        let strategy = ctx.config.cluster.borrow().vm_rollout_strategy;
        let plan = live_update::plan(&template, &raw, v, strategy);
        restart_required = plan.restart_required;
        if let (Some(patch), true) = (plan.patch, phase::is(v, VmiPhase::Running)) {
            match vmis
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    tracing::info!(%ns, %name, patch = %patch["spec"], "live update of the VMI");
                    vmi = Some(updated);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    requeue = Duration::from_millis(200);
                }
                Err(e) => {
                    let msg = format!("Error encountered while handling a live update: {e}");
                    ctx.event(vm.as_ref(), EventType::Warning, "FailedUpdate", msg)
                        .await;
                    requeue = Duration::from_secs(5);
                }
            }
        }
    }

    // Status, from what exists now.
    let mut requests = status.state_change_requests.take().unwrap_or_default();
    trim_requests(&mut requests, vmi.as_ref(), strategy);
    status.state_change_requests = (!requests.is_empty()).then_some(requests);
    let printable = printable_status(&PrintableInputs {
        vm_deleting: vm.metadata.deletion_timestamp.is_some(),
        vmi: vmi.as_ref(),
        create_expected,
        delete_expected,
        start_failures: status
            .start_failure
            .as_ref()
            .and_then(|s| s.consecutive_fail_count)
            .unwrap_or(0),
        strategy,
    });
    let printable = match volumes.printable(set_to_start) {
        Some(p) if vmi.is_none() && vm.metadata.deletion_timestamp.is_none() => p,
        _ => printable,
    };
    status.printable_status = Some(printable.into());
    status.created = Some(vmi.is_some());
    status.ready =
        Some(vmi.as_ref().is_some_and(|v| {
            !phase::is_final(v) && phase::vmi_condition_true(v, condition::READY)
        }));
    status.run_strategy = Some(strategy.as_str().into());
    status.desired_generation = vm.metadata.generation;
    status.observed_generation = vmi
        .as_ref()
        .and_then(|v| v.annotations().get(VM_GENERATION_ANNOTATION))
        .and_then(|g| g.parse().ok())
        .or(vm.metadata.generation);
    let mut conds = status.conditions.take().unwrap_or_default();
    sync_conditions(&mut conds, vmi.as_ref(), failure, now);
    if volumes.data_volumes > 0 {
        let (st, reason, msg) = if volumes.not_ready.is_empty() {
            (
                "True",
                "AllDVsReady",
                "All of the VMI's DVs are bound and ready".to_string(),
            )
        } else {
            (
                "False",
                "NotAllDVsReady",
                format!(
                    "Not all of the VMI's DVs are ready: {}",
                    volumes.not_ready.join(", ")
                ),
            )
        };
        set_condition(
            &mut conds,
            "DataVolumesReady",
            st,
            Some(reason.into()),
            Some(msg),
            now,
        );
    }
    match restart_required {
        Some(m) => set_condition(
            &mut conds,
            live_update::RESTART_REQUIRED,
            "True",
            None,
            Some(m),
            now,
        ),
        None => conds.retain(|c| c.r#type != live_update::RESTART_REQUIRED),
    }
    status.conditions = Some(conds);

    if status != old_status {
        write_status(&vms, &vm, &old_status, &status).await?;
    }
    Ok(Action::requeue(requeue))
}

/// The DataVolumes and claims a VM's template uses, as `setPrintableStatus` and the
/// `DataVolumesReady` condition see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumesState {
    /// How many DataVolumes the template references.
    pub data_volumes: usize,
    /// DataVolumes not `Succeeded` (name and phase).
    pub not_ready: Vec<String>,
    /// A DataVolume is `Failed` (KubeVirt's `HasDataVolumeErrors`).
    pub error: bool,
    /// A DataVolume is still being populated (`HasDataVolumeProvisioning`).
    pub provisioning: bool,
    /// A `persistentVolumeClaim` volume's claim is missing or not bound.
    pub unbound_claim: bool,
}

impl VolumesState {
    /// Whether the VMI may be created. An unbound claim does not hold it back (KubeVirt
    /// creates the VMI; its launcher waits for the volume).
    pub fn ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    /// KubeVirt's rows 7, 9 and 10 of `setPrintableStatus` (DataVolumeError, Provisioning,
    /// WaitingForVolumeBinding).
    pub fn printable(&self, set_to_start: bool) -> Option<&'static str> {
        if self.error {
            Some("DataVolumeError")
        } else if self.provisioning {
            Some("Provisioning")
        } else if set_to_start && (self.unbound_claim || !self.not_ready.is_empty()) {
            Some("WaitingForVolumeBinding")
        } else {
            None
        }
    }
}

/// Creates the DataVolumes of `spec.dataVolumeTemplates` that do not exist (owned by the VM,
/// as KubeVirt does) and reports the state of every DataVolume and claim the template uses.
async fn sync_data_volumes(
    ctx: &Context,
    vm: &VirtualMachine,
    ns: &str,
) -> Result<VolumesState, Error> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use kubevirt_api::DataVolume;
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), ns);
    for t in vm.spec.data_volume_templates.iter().flatten() {
        let meta = t.metadata.clone().unwrap_or_default();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        if dvs.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut owner = vm
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        owner.block_owner_deletion = Some(true);
        let dv = DataVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_string()),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: t.spec.clone(),
            status: None,
        };
        match dvs.create(&PostParams::default(), &dv).await {
            Ok(_) => {
                ctx.event(
                    vm,
                    EventType::Normal,
                    "SuccessfulDataVolumeCreate",
                    format!("Created DataVolume {name}"),
                )
                .await
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.event(
                    vm,
                    EventType::Warning,
                    "FailedDataVolumeCreate",
                    format!("Error creating DataVolume {name}: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    let mut st = VolumesState::default();
    let volumes = vm
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for v in &volumes {
        if let Some(d) = &v.data_volume {
            st.data_volumes += 1;
            let phase = dvs
                .get_opt(&d.name)
                .await?
                .and_then(|dv| dv.status)
                .and_then(|s| s.phase)
                .unwrap_or_default();
            match phase.as_str() {
                "Succeeded" => {}
                "Failed" => {
                    st.error = true;
                    st.not_ready.push(format!("{} (Failed)", d.name));
                }
                "WaitForFirstConsumer" | "PendingPopulation" => {
                    st.not_ready.push(format!("{} ({phase})", d.name))
                }
                _ => {
                    st.provisioning = true;
                    st.not_ready.push(if phase.is_empty() {
                        d.name.clone()
                    } else {
                        format!("{} ({phase})", d.name)
                    });
                }
            }
        } else if let Some(p) = &v.persistent_volume_claim {
            let bound = pvcs
                .get_opt(&p.claim_name)
                .await?
                .and_then(|c| c.status)
                .and_then(|s| s.phase)
                .is_some_and(|ph| ph == "Bound");
            if !bound {
                st.unbound_claim = true;
            }
        }
    }
    Ok(st)
}

/// A merge patch on `/status` carrying the resourceVersion as a precondition, so a request a
/// client added meanwhile is never lost (the conflict retries with the new VM). Fields that
/// went away are sent as `null`.
async fn write_status(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    old: &VirtualMachineStatus,
    new: &VirtualMachineStatus,
) -> Result<(), Error> {
    let mut body = serde_json::to_value(new)?;
    if let (Some(obj), serde_json::Value::Object(prev)) =
        (body.as_object_mut(), serde_json::to_value(old)?)
    {
        for k in prev.keys() {
            obj.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    kubevirt_runtime::status::write_status_at(
        vms,
        &vm.name_any(),
        vm.metadata.resource_version.as_deref(),
        body,
    )
    .await?;
    Ok(())
}

pub fn error_policy(vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(vm = %vm.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

/// Declarative hotplug: the running VMI follows the template's hotpluggable volumes
/// ([`hotplug`]). A conflict (the VMI changed meanwhile) is retried at the next reconcile.
async fn sync_hotplug_volumes(
    vmis: &Api<VirtualMachineInstance>,
    vm: &VirtualMachine,
    vmi: &VirtualMachineInstance,
) {
    let running = matches!(
        VmiPhase::of(vmi),
        Some(VmiPhase::Running | VmiPhase::Scheduled)
    );
    let Some(template) = vm.spec.template.spec.as_ref() else {
        return;
    };
    if !running || vmi.metadata.deletion_timestamp.is_some() {
        return;
    }
    let Some((vols, disks)) = hotplug::sync(template, &vmi.spec) else {
        return;
    };
    let body = hotplug::patch(vmi.metadata.resource_version.as_deref(), &vols, &disks);
    let name = vmi.name_any();
    match vmis
        .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => {
            tracing::info!(vmi = %name, volumes = vols.len(), "hotplug volumes synced to the VMI")
        }
        Err(e) => tracing::info!(vmi = %name, error = %e, "hotplug volumes not synced yet"),
    }
}

pub mod hotplug;
pub mod live_update;

#[cfg(test)]
mod tests;
