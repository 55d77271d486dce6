//! VirtualMachineRestore (`snapshot.kubevirt.io/v1beta1`): KubeVirt's
//! pkg/storage/snapshot/restore.go, onto the snapshot's own VM while it is stopped, or to a
//! new VM (`spec.target.name` naming a VM that does not exist).
//!
//! For each `volumeBackup` of the snapshot's content a claim `restore-<restore uid>-<volume>`
//! is created whose `dataSource` is the backup's VolumeSnapshot (the local-path provisioner
//! fills it with the snapshot's data), owned by the VM (KubeVirt's default
//! `volumeOwnershipPolicy: Vm`). The VM's spec is then replaced by the one kept in the content,
//! with every restored volume pointing to its new claim (a DataVolume volume becomes a
//! `persistentVolumeClaim` volume and its `dataVolumeTemplate` is dropped), its run strategy
//! kept. A running target waits (KubeVirt's `WaitGracePeriod`: 5 minutes, then an error).
//!
//! A new VM is the snapshot's VM (labels, annotations, spec) under the target's name, stopped
//! (KubeVirt: `running: false` or `runStrategy: Halted`), with `spec.patches` applied
//! ([`patch_vm`]); its claims get their owner once it exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kubevirt_api::{
    PersistentVolumeClaimVolumeSource, SnapshotCondition, SnapshotVirtualMachine, VirtualMachine,
    VirtualMachineInstance, VirtualMachineRestore, VirtualMachineSnapshot,
    VirtualMachineSnapshotContent, VirtualMachineSpec, VolumeBackup, VolumeRestore,
};
use serde_json::json;

use crate::snapshot::{set_condition, set_finalizer, PHASE_FAILED};
use crate::{Context, Error};

/// KubeVirt's `vmRestoreFinalizer`.
pub const RESTORE_FINALIZER: &str = "snapshot.kubevirt.io/vmrestore-protection";
/// KubeVirt's `RestoreNameAnnotation`, on the restored claims.
pub const RESTORE_NAME_ANNOTATION: &str = "restore.kubevirt.io/name";
/// KubeVirt's `lastRestoreAnnotation`, on the VM once its spec is restored.
pub const LAST_RESTORE_ANNOTATION: &str = "restore.kubevirt.io/lastRestoreUID";
/// KubeVirt's `errorRestoreToExistingTarget`.
pub const ERROR_RESTORE_TO_EXISTING_TARGET: &str =
    "restore source and restore target are different but restore target already exists";
/// KubeVirt's `waitGracePeriodMessage`.
pub const WAIT_GRACE_PERIOD_MESSAGE: &str = "Waiting for target VM to be powered off. Please stop the restore target to proceed with restore, or the operation will fail after 5m0s";
/// KubeVirt's `restoreGracePeriodExceededError`.
pub const GRACE_PERIOD_EXCEEDED: &str = "Restore target failed to be ready within 5m0s. Please power off the target VM before attempting restore";
/// KubeVirt's `snapshotv1.DefaultGracePeriod`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(300);
/// Why a restore to a VM that does not exist is refused (KubeVirt would create it).
/// Where `spec.patches` may write (see [`patch_vm`]).
pub const PATCHABLE: [&str; 3] = ["/metadata/labels", "/metadata/annotations", "/spec"];
/// A patched VM larger than this is refused (`copy` doubles a document at each step; the
/// API server stores nothing larger anyway).
pub const MAX_PATCHED_VM_BYTES: usize = 1536 * 1024;

/// Why one of `spec.patches` is refused: each names the patch (its index and text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// Not one RFC 6902 operation.
    #[error("patch {index} ({patch}) is not a JSON patch operation: {reason}")]
    Decode {
        index: usize,
        patch: String,
        reason: String,
    },
    /// Writes (or moves from) a path outside [`PATCHABLE`]: the VM's name and namespace are
    /// the restore's target, its kind, apiVersion, status and other metadata the controller's.
    #[error("patch {index} ({patch}) may not change {path}: patches may change only /metadata/labels, /metadata/annotations and /spec of the new VM")]
    Outside {
        index: usize,
        patch: String,
        path: String,
    },
    /// The operation does not apply (a missing path, a failed `test`...).
    #[error("patch {index} ({patch}) does not apply: {reason}")]
    Apply {
        index: usize,
        patch: String,
        reason: String,
    },
    /// The patched object is no longer a VirtualMachine.
    #[error("patch {index} ({patch}) leaves no valid VirtualMachine: {reason}")]
    Breaks {
        index: usize,
        patch: String,
        reason: String,
    },
    /// The patched object is larger than [`MAX_PATCHED_VM_BYTES`].
    #[error(
        "patch {index} ({patch}) makes the VirtualMachine larger than {MAX_PATCHED_VM_BYTES} bytes"
    )]
    TooLarge { index: usize, patch: String },
}

fn patchable(path: &str) -> bool {
    PATCHABLE.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// KubeVirt's `patchVM`: the restore's (or clone's) JSON patches applied in order to the new
/// VM. Each is one RFC 6902 operation; one writing outside [`PATCHABLE`], one that does not
/// apply, or one after which the object is no longer a VirtualMachine is refused, naming it.
pub fn patch_vm(vm: &VirtualMachine, patches: &[String]) -> Result<VirtualMachine, PatchError> {
    // Messages quote the patch; a huge one is cut.
    let shown = |p: &str| {
        if p.len() > 200 {
            let mut end = 200;
            while !p.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &p[..end])
        } else {
            p.to_string()
        }
    };
    let mut doc = serde_json::to_value(vm).map_err(|e| PatchError::Breaks {
        index: 0,
        patch: String::new(),
        reason: e.to_string(),
    })?;
    let mut out = vm.clone();
    for (index, p) in patches.iter().enumerate() {
        let patch = shown(p);
        let op: json_patch::PatchOperation =
            serde_json::from_str(p).map_err(|e| PatchError::Decode {
                index,
                patch: patch.clone(),
                reason: e.to_string(),
            })?;
        let written: Vec<&str> = match &op {
            json_patch::PatchOperation::Add(o) => vec![o.path.as_str()],
            json_patch::PatchOperation::Remove(o) => vec![o.path.as_str()],
            json_patch::PatchOperation::Replace(o) => vec![o.path.as_str()],
            json_patch::PatchOperation::Move(o) => vec![o.from.as_str(), o.path.as_str()],
            json_patch::PatchOperation::Copy(o) => vec![o.path.as_str()],
            json_patch::PatchOperation::Test(_) => vec![],
        };
        if let Some(path) = written.into_iter().find(|p| !patchable(p)) {
            return Err(PatchError::Outside {
                index,
                patch,
                path: path.to_string(),
            });
        }
        json_patch::patch(&mut doc, &json_patch::Patch(vec![op])).map_err(|e| {
            PatchError::Apply {
                index,
                patch: patch.clone(),
                reason: e.to_string(),
            }
        })?;
        if serde_json::to_vec(&doc).map_or(usize::MAX, |b| b.len()) > MAX_PATCHED_VM_BYTES {
            return Err(PatchError::TooLarge { index, patch });
        }
        out = serde_json::from_value(doc.clone()).map_err(|e| PatchError::Breaks {
            index,
            patch: patch.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(out)
}

/// KubeVirt's `generateRestoredVMSpec` for a target that does not exist: the snapshot's VM
/// (labels, annotations, spec) under the target's name, volumes repointed, stopped
/// (`running: false` if the snapshot's VM used `running`, else `runStrategy: Halted`), with
/// the last-restore annotation.
pub fn new_target_vm(
    snap_vm: &SnapshotVirtualMachine,
    name: &str,
    ns: &str,
    claims: &BTreeMap<String, String>,
    last_restore: &str,
) -> VirtualMachine {
    let meta = snap_vm.metadata.clone().unwrap_or_default();
    let mut spec = restored_spec(&snap_vm.spec.clone().unwrap_or_default(), claims);
    if spec.running.is_some() {
        spec.running = Some(false);
    } else {
        spec.run_strategy = Some("Halted".into());
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(LAST_RESTORE_ANNOTATION.into(), last_restore.into());
    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: meta.labels,
            annotations: Some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// KubeVirt's `restorePVCName`.
pub fn restore_claim_name(restore_uid: &str, volume: &str) -> String {
    format!("restore-{restore_uid}-{volume}")
}

/// KubeVirt's `getRestoreAnnotationValue`.
pub fn last_restore_value(restore: &str, uid: &str) -> String {
    format!("{restore}-{uid}")
}

/// The claim restoring one backup: the backup's claim spec (access modes, size, class, mode)
/// with the VolumeSnapshot as its `dataSource`.
pub fn restore_claim(
    backup: &VolumeBackup,
    restore_name: &str,
    restore_uid: &str,
    ns: &str,
) -> Option<PersistentVolumeClaim> {
    let vs = backup.volume_snapshot_name.clone()?;
    let src = backup
        .persistent_volume_claim
        .spec
        .clone()
        .unwrap_or_default();
    let meta = backup
        .persistent_volume_claim
        .metadata
        .clone()
        .unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = meta
        .annotations
        .unwrap_or_default()
        .into_iter()
        // The source claim's provisioning state is not the new claim's.
        .filter(|(k, _)| {
            !k.starts_with("pv.kubernetes.io/")
                && !k.starts_with("volume.kubernetes.io/")
                && !k.starts_with("volume.beta.kubernetes.io/")
                && !k.starts_with("cdi.kubevirt.io/")
        })
        .collect();
    annotations.insert(RESTORE_NAME_ANNOTATION.into(), restore_name.into());
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(restore_claim_name(restore_uid, &backup.volume_name)),
            namespace: Some(ns.into()),
            labels: meta.labels,
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: src.access_modes,
            resources: src.resources,
            storage_class_name: src.storage_class_name,
            volume_mode: src.volume_mode,
            data_source: Some(TypedLocalObjectReference {
                api_group: Some(kubevirt_api::volumesnapshot::GROUP.into()),
                kind: "VolumeSnapshot".into(),
                name: vs,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The snapshot's VM spec with each restored volume pointing to its new claim; the
/// dataVolumeTemplates of restored DataVolumes are dropped (the claim replaces them).
pub fn restored_spec(
    snapshot_spec: &VirtualMachineSpec,
    claims: &BTreeMap<String, String>,
) -> VirtualMachineSpec {
    let mut spec = snapshot_spec.clone();
    let mut dropped_dvs = Vec::new();
    if let Some(vols) = spec.template.spec.as_mut().and_then(|s| s.volumes.as_mut()) {
        for v in vols.iter_mut() {
            let Some(claim) = claims.get(&v.name) else {
                continue;
            };
            if let Some(dv) = v.data_volume.take() {
                dropped_dvs.push(dv.name);
                v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    hotpluggable: dv.hotpluggable,
                    read_only: None,
                });
            } else if let Some(p) = v.persistent_volume_claim.as_mut() {
                p.claim_name = claim.clone();
            }
        }
    }
    if let Some(t) = spec.data_volume_templates.as_mut() {
        t.retain(|d| {
            let n = d.metadata.as_ref().and_then(|m| m.name.as_deref());
            !n.is_some_and(|n| dropped_dvs.iter().any(|x| x == n))
        });
        if t.is_empty() {
            spec.data_volume_templates = None;
        }
    }
    spec
}

/// Where the restore stands; `Err` is KubeVirt's `doUpdateError` message.
enum Step {
    Wait(String),
    Done(Vec<VolumeRestore>),
}

pub async fn reconcile(
    restore: Arc<VirtualMachineRestore>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&restore.metadata)?;
    let name = crate::name_of(&restore.metadata)?;
    let restores: Api<VirtualMachineRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let target = restore.spec.target.name.clone();
    if restore.metadata.deletion_timestamp.is_some() {
        release(&vms, &target, &name).await?;
        set_finalizer(&restores, restore.as_ref(), RESTORE_FINALIZER, false).await?;
        return Ok(Action::await_change());
    }
    let old = restore.status.clone().unwrap_or_default();
    if old.complete == Some(true) {
        release(&vms, &target, &name).await?;
        set_finalizer(&restores, restore.as_ref(), RESTORE_FINALIZER, false).await?;
        return Ok(Action::await_change());
    }
    set_finalizer(&restores, restore.as_ref(), RESTORE_FINALIZER, true).await?;
    let now = Timestamp::now();
    let mut status = old.clone();
    let mut conditions: Vec<SnapshotCondition> = status.conditions.take().unwrap_or_default();
    let requeue;
    match step(&ctx, &restore, &ns, &name, now).await {
        Ok(Step::Done(restored)) => {
            status.complete = Some(true);
            status.restore_time = Some(Time(now));
            status.restores = Some(restored);
            set_condition(
                &mut conditions,
                "Progressing",
                false,
                "Operation complete",
                now,
            );
            set_condition(&mut conditions, "Ready", true, "Operation complete", now);
            ctx.event(
                restore.as_ref(),
                EventType::Normal,
                "VirtualMachineRestoreComplete",
                format!("Successfully completed VirtualMachineRestore {name}"),
            )
            .await;
            requeue = Action::requeue(Duration::from_millis(100));
        }
        Ok(Step::Wait(reason)) => {
            status.complete = Some(false);
            set_condition(
                &mut conditions,
                "Progressing",
                reason != WAIT_GRACE_PERIOD_MESSAGE,
                &reason,
                now,
            );
            set_condition(&mut conditions, "Ready", false, &reason, now);
            requeue = Action::requeue(Duration::from_secs(2));
        }
        Err(StepError::Kube(e)) => return Err(e),
        Err(StepError::User(message)) => {
            status.complete = Some(false);
            let first = conditions
                .iter()
                .all(|c| c.reason.as_deref() != Some(message.as_str()));
            set_condition(&mut conditions, "Progressing", false, &message, now);
            set_condition(&mut conditions, "Ready", false, &message, now);
            if first {
                ctx.event(
                    restore.as_ref(),
                    EventType::Warning,
                    "VirtualMachineRestoreError",
                    format!("VirtualMachineRestore encountered error {message}"),
                )
                .await;
            }
            requeue = Action::requeue(Duration::from_secs(5));
        }
    }
    status.conditions = Some(conditions);
    if status != old {
        kubevirt_runtime::status::write_status(&restores, &name, &status).await?;
    }
    Ok(requeue)
}

enum StepError {
    Kube(Error),
    User(String),
}

impl From<kube::Error> for StepError {
    fn from(e: kube::Error) -> Self {
        StepError::Kube(e.into())
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Kube(e)
    }
}

async fn step(
    ctx: &Context,
    restore: &VirtualMachineRestore,
    ns: &str,
    name: &str,
    now: Timestamp,
) -> Result<Step, StepError> {
    let user = |m: String| Err(StepError::User(m));
    let uid = crate::uid_of(&restore.metadata)?;
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(ctx.client.clone(), ns);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let t = &restore.spec.target;
    if t.kind != "VirtualMachine"
        || t.api_group.as_deref() != Some(kubevirt_api::admitters::snapshot::KUBEVIRT_GROUP)
    {
        return user(format!(
            "unknown source {}/{}",
            t.api_group.as_deref().unwrap_or(""),
            t.kind
        ));
    }
    let snap_key = format!("{ns}/{}", restore.spec.virtual_machine_snapshot_name);
    let Some(snap) = snaps
        .get_opt(&restore.spec.virtual_machine_snapshot_name)
        .await?
    else {
        return user(format!("VMSnapshot {snap_key} does not exist"));
    };
    let ss = snap.status.clone().unwrap_or_default();
    if ss.phase.as_deref() == Some(PHASE_FAILED) {
        return user(format!(
            "VMSnapshot {snap_key} failed and is invalid to use"
        ));
    }
    if ss.ready_to_use != Some(true) {
        return user(format!("VMSnapshot {snap_key} not ready"));
    }
    let Some(cname) = ss.virtual_machine_snapshot_content_name.clone() else {
        return user(format!("no snapshot content name in {snap_key}"));
    };
    let Some(content) = contents.get_opt(&cname).await? else {
        return user(format!("VMSnapshotContent {ns}/{cname} does not exist"));
    };
    if content.status.as_ref().and_then(|s| s.ready_to_use) != Some(true) {
        return user(format!("VMSnapshotContent {ns}/{cname} not ready"));
    }
    let Some(snap_vm) = content.spec.source.virtual_machine.as_ref() else {
        return user("unexpected snapshot source".into());
    };
    let lr = last_restore_value(name, &uid);
    let backups = content.spec.volume_backups.clone().unwrap_or_default();
    let restored: Vec<VolumeRestore> = backups
        .iter()
        .map(|b| VolumeRestore {
            data_volume_name: None,
            persistent_volume_claim: restore_claim_name(&uid, &b.volume_name),
            volume_name: b.volume_name.clone(),
            volume_snapshot_name: b.volume_snapshot_name.clone().unwrap_or_default(),
        })
        .collect();
    let Some(vm) = vms.get_opt(&t.name).await? else {
        // A new VM. It is built, patched and checked by admission (a dry run) before anything
        // is created, so a refused patch or VM leaves no claim behind; then its claims (no
        // owner yet), then the VM, then the claims' owner.
        let mut pvcs = Vec::new();
        let mut by_volume = BTreeMap::new();
        for b in &backups {
            let Some(pvc) = restore_claim(b, name, &uid, ns) else {
                return user(format!("VolumeSnapshotName missing {}", b.volume_name));
            };
            pvcs.push(pvc);
            by_volume.insert(
                b.volume_name.clone(),
                restore_claim_name(&uid, &b.volume_name),
            );
        }
        let mut new_vm = new_target_vm(snap_vm, &t.name, ns, &by_volume, &lr);
        set_memory_reference(&mut new_vm, &content);
        let patches = restore.spec.patches.clone().unwrap_or_default();
        let new_vm = match patch_vm(&new_vm, &patches) {
            Ok(v) => v,
            Err(e) => return user(format!("error patching VM {}: {e}", t.name)),
        };
        let refused = |code| matches!(code, 400 | 403 | 422);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match vms.create(&dry_run, &new_vm).await {
            Ok(_) => {}
            // Refused by admission: the user's snapshot or patches made an invalid VM.
            Err(kube::Error::Api(s)) if refused(s.code) => {
                return user(format!("error creating VM {}: {}", t.name, s.message));
            }
            Err(e) => return Err(e.into()),
        }
        for pvc in &pvcs {
            create_claim(&claims, pvc).await?;
        }
        let created = match vms.create(&PostParams::default(), &new_vm).await {
            Ok(v) => v,
            Err(kube::Error::Api(s)) if refused(s.code) => {
                return user(format!("error creating VM {}: {}", t.name, s.message));
            }
            Err(e) => return Err(e.into()),
        };
        own_claims(&claims, &created, &backups, &uid).await?;
        return Ok(Step::Done(restored));
    };
    let already = vm
        .annotations()
        .get(LAST_RESTORE_ANNOTATION)
        .is_some_and(|v| v == &lr);
    if already {
        // A VM this restore created: its claims may still lack their owner.
        own_claims(&claims, &vm, &backups, &uid).await?;
        release(&vms, &t.name, name).await?;
        return Ok(Step::Done(restored));
    }
    if vm.metadata.uid.is_none() || vm.metadata.uid != ss.source_uid {
        return user(ERROR_RESTORE_TO_EXISTING_TARGET.into());
    }
    // Patches shape a new VM (a clone's MACs, serial, labels); over the snapshot's own VM they
    // would be dropped silently, so a restore that has them is refused here.
    if restore.spec.patches.as_ref().is_some_and(|p| !p.is_empty()) {
        return user(format!(
            "spec.patches apply only to a restore to a new VM; {} is the snapshot's own VM: remove the patches or name a new target",
            t.name
        ));
    }
    if vmis.get_opt(&t.name).await?.is_some() {
        let created = restore
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        if crate::snapshot::deadline_exceeded(created, GRACE_PERIOD, now) {
            return user(GRACE_PERIOD_EXCEEDED.into());
        }
        return Ok(Step::Wait(WAIT_GRACE_PERIOD_MESSAGE.into()));
    }
    let vs = vm.status.clone().unwrap_or_default();
    if let Some(other) = vs.restore_in_progress.as_deref().filter(|r| *r != name) {
        return user(format!("vm restore {other} in progress"));
    }
    if let Some(s) = vs.snapshot_in_progress.as_deref() {
        return Ok(Step::Wait(format!("snapshot {s} in progress")));
    }
    if vs.restore_in_progress.is_none() {
        kubevirt_runtime::status::write_status(&vms, &t.name, json!({"restoreInProgress": name}))
            .await?;
    }
    // The claims, owned by the VM.
    let owner = vm
        .controller_owner_ref(&())
        .map(|mut o| {
            o.controller = None;
            o
        })
        .ok_or(Error::MissingField("metadata.uid"))?;
    let mut by_volume = BTreeMap::new();
    for b in &backups {
        let Some(mut pvc) = restore_claim(b, name, &uid, ns) else {
            return user(format!("VolumeSnapshotName missing {}", b.volume_name));
        };
        pvc.metadata.owner_references = Some(vec![owner.clone()]);
        create_claim(&claims, &pvc).await?;
        by_volume.insert(
            b.volume_name.clone(),
            restore_claim_name(&uid, &b.volume_name),
        );
    }
    // The VM's spec from the snapshot, volumes repointed, its run strategy kept.
    let mut spec = restored_spec(&snap_vm.spec.clone().unwrap_or_default(), &by_volume);
    spec.run_strategy = vm.spec.run_strategy.clone();
    spec.running = vm.spec.running;
    let mut new_vm = vm.clone();
    new_vm.spec = spec;
    new_vm
        .annotations_mut()
        .insert(LAST_RESTORE_ANNOTATION.into(), lr);
    set_memory_reference(&mut new_vm, &content);
    vms.replace(&t.name, &PostParams::default(), &new_vm)
        .await?;
    release(&vms, &t.name, name).await?;
    Ok(Step::Done(restored))
}

/// A memory snapshot's reference ([`kubevirt_api::memsnap`]): a restored VM carries the
/// content's, so the VM controller starts its next VMI from that memory on the node holding
/// it (once); a content without memory leaves the VM without one (an older reference the
/// snapshot's VM still had is dropped).
pub fn set_memory_reference(vm: &mut VirtualMachine, content: &VirtualMachineSnapshotContent) {
    use kubevirt_api::memsnap;
    let r = content
        .annotations()
        .get(memsnap::CONTENT_STATE)
        .and_then(|v| memsnap::MemoryRef::parse(v).ok());
    let annotations = vm.annotations_mut();
    match r {
        Some(r) => {
            annotations.insert(memsnap::RESTORE.into(), r.to_annotation());
        }
        None => {
            annotations.remove(memsnap::RESTORE);
        }
    }
}

/// Creates a restore claim unless it exists.
async fn create_claim(
    claims: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let name = crate::name_of(&pvc.metadata)?;
    if claims.get_opt(&name).await?.is_none() {
        match claims.create(&PostParams::default(), pvc).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// KubeVirt's `updateRestorePVCOwnership`: the restore's claims that have no owner yet are
/// owned by the (new) VM.
async fn own_claims(
    claims: &Api<PersistentVolumeClaim>,
    vm: &VirtualMachine,
    backups: &[VolumeBackup],
    restore_uid: &str,
) -> Result<(), Error> {
    let owner = vm
        .controller_owner_ref(&())
        .map(|mut o| {
            o.controller = None;
            o
        })
        .ok_or(Error::MissingField("metadata.uid"))?;
    for b in backups {
        let cn = restore_claim_name(restore_uid, &b.volume_name);
        let Some(c) = claims.get_opt(&cn).await? else {
            continue;
        };
        if c.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        {
            continue;
        }
        claims
            .patch(
                &cn,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": [owner]}})),
            )
            .await?;
    }
    Ok(())
}

/// Clears the VM's `restoreInProgress` if this restore set it.
async fn release(vms: &Api<VirtualMachine>, vm: &str, restore: &str) -> Result<(), Error> {
    let Some(v) = vms.get_opt(vm).await? else {
        return Ok(());
    };
    if v.status
        .as_ref()
        .and_then(|s| s.restore_in_progress.as_deref())
        == Some(restore)
    {
        kubevirt_runtime::status::write_status(vms, vm, json!({"restoreInProgress": null})).await?;
    }
    Ok(())
}

pub fn error_policy(r: Arc<VirtualMachineRestore>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(restore = %r.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::{
        DataVolumeSource, DataVolumeTemplateSpec, VirtualMachineInstanceSpec,
        VirtualMachineInstanceTemplateSpec, Volume,
    };

    #[test]
    fn restore_claims_come_from_the_volume_snapshot_with_the_backups_spec() {
        let b = VolumeBackup {
            volume_name: "disk0".into(),
            volume_snapshot_name: Some("vmsnapshot-s-volume-disk0".into()),
            persistent_volume_claim: kubevirt_api::PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: Some("src".into()),
                    annotations: Some(BTreeMap::from([
                        (
                            "pv.kubernetes.io/bind-completed".to_string(),
                            "yes".to_string(),
                        ),
                        ("keep".to_string(), "me".to_string()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PersistentVolumeClaimSpec {
                    storage_class_name: Some("local-path".into()),
                    volume_name: Some("pv-of-the-source".into()),
                    ..Default::default()
                }),
            },
        };
        let c = restore_claim(&b, "r", "u1", "ns").expect("has a VolumeSnapshot");
        assert_eq!(c.metadata.name.as_deref(), Some("restore-u1-disk0"));
        let a = c.metadata.annotations.expect("annotations");
        assert_eq!(
            a.get(RESTORE_NAME_ANNOTATION).map(String::as_str),
            Some("r")
        );
        assert_eq!(a.get("keep").map(String::as_str), Some("me"));
        assert!(!a.contains_key("pv.kubernetes.io/bind-completed"));
        let spec = c.spec.expect("spec");
        let ds = spec.data_source.expect("dataSource");
        assert_eq!(ds.kind, "VolumeSnapshot");
        assert_eq!(ds.name, "vmsnapshot-s-volume-disk0");
        assert_eq!(spec.volume_name, None, "never bound to the source's volume");
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        let mut no_vs = b.clone();
        no_vs.volume_snapshot_name = None;
        assert!(restore_claim(&no_vs, "r", "u1", "ns").is_none());
    }

    #[test]
    fn the_restored_spec_points_volumes_at_the_new_claims() {
        let spec = VirtualMachineSpec {
            data_volume_templates: Some(vec![DataVolumeTemplateSpec {
                metadata: Some(ObjectMeta {
                    name: Some("root-dv".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            template: VirtualMachineInstanceTemplateSpec {
                spec: Some(VirtualMachineInstanceSpec {
                    volumes: Some(vec![
                        Volume {
                            name: "root".into(),
                            data_volume: Some(DataVolumeSource {
                                name: "root-dv".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "data".into(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: "data-claim".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "boot".into(),
                            container_disk: Some(Default::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let claims = BTreeMap::from([
            ("root".to_string(), "restore-u-root".to_string()),
            ("data".to_string(), "restore-u-data".to_string()),
        ]);
        let out = restored_spec(&spec, &claims);
        assert_eq!(out.data_volume_templates, None);
        let vols = out.template.spec.and_then(|s| s.volumes).expect("volumes");
        assert_eq!(vols[0].data_volume, None);
        assert_eq!(
            vols[0]
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()),
            Some("restore-u-root")
        );
        assert_eq!(
            vols[1]
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()),
            Some("restore-u-data")
        );
        assert!(vols[2].container_disk.is_some());
    }

    fn snap_vm() -> SnapshotVirtualMachine {
        serde_json::from_value(json!({
            "metadata": {"name": "src", "namespace": "ns", "uid": "u-src", "generation": 4,
                "labels": {"app": "a"}, "annotations": {"note": "n"}},
            "spec": {"running": true, "template": {"spec": {"domain": {"devices": {}}}}}
        }))
        .expect("vm")
    }

    #[test]
    fn a_new_vm_is_the_snapshots_vm_under_the_targets_name_stopped() {
        let vm = new_target_vm(&snap_vm(), "dst", "ns", &BTreeMap::new(), "r-u");
        assert_eq!(vm.metadata.name.as_deref(), Some("dst"));
        assert_eq!(vm.metadata.uid, None, "never the source's identity");
        assert_eq!(vm.metadata.generation, None);
        assert_eq!(vm.spec.running, Some(false));
        assert_eq!(vm.spec.run_strategy, None);
        let a = vm.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            a.get(LAST_RESTORE_ANNOTATION).map(String::as_str),
            Some("r-u")
        );
        assert_eq!(a.get("note").map(String::as_str), Some("n"));
        let mut s = snap_vm();
        if let Some(spec) = s.spec.as_mut() {
            spec.running = None;
            spec.run_strategy = Some("Always".into());
        }
        let vm = new_target_vm(&s, "dst", "ns", &BTreeMap::new(), "r-u");
        assert_eq!(vm.spec.run_strategy.as_deref(), Some("Halted"));
    }

    #[test]
    fn hostile_patches_are_refused_naming_the_patch() {
        let vm = new_target_vm(&snap_vm(), "dst", "ns", &BTreeMap::new(), "r-u");
        let ok = patch_vm(
            &vm,
            &[r#"{"op":"add","path":"/metadata/labels/x","value":"y"}"#.into()],
        )
        .expect("a label patch applies");
        assert_eq!(
            ok.metadata
                .labels
                .and_then(|l| l.get("x").cloned())
                .as_deref(),
            Some("y")
        );
        let refused = |p: &str| {
            patch_vm(
                &vm,
                &[
                    r#"{"op":"test","path":"/kind","value":"VirtualMachine"}"#.into(),
                    p.into(),
                ],
            )
            .expect_err(p)
        };
        for path in [
            "/metadata/name",
            "/metadata/namespace",
            "/kind",
            "/apiVersion",
            "/status",
            "/metadata/ownerReferences",
            "/metadata/labels~1x",
            "/specx",
        ] {
            let p = format!(r#"{{"op":"add","path":"{path}","value":"x"}}"#);
            match refused(&p) {
                PatchError::Outside {
                    index, path: got, ..
                } => {
                    assert_eq!((index, got.as_str()), (1, path));
                }
                e => panic!("{p}: {e}"),
            }
        }
        let e = refused(r#"{"op":"move","from":"/metadata/name","path":"/spec/x"}"#);
        assert!(
            e.to_string().contains("may not change /metadata/name"),
            "{e}"
        );
        assert!(matches!(
            refused(r#"{"op":"remove","path":"/spec/nothing"}"#),
            PatchError::Apply { index: 1, .. }
        ));
        assert!(matches!(
            refused(r#"{"op":"replace","path":"/spec","value":7}"#),
            PatchError::Breaks { index: 1, .. }
        ));
        assert!(matches!(
            refused(r#"{"op":"explode","path":"/spec"}"#),
            PatchError::Decode { index: 1, .. }
        ));
        assert!(matches!(refused("not json"), PatchError::Decode { .. }));
        let e = refused(r#"{"op":"test","path":"/spec/running","value":true}"#);
        assert!(e.to_string().starts_with("patch 1 ("), "{e}");
        // `copy` doubling the spec is stopped at the size limit.
        let mut doubling = vec![
            format!(
                r#"{{"op":"add","path":"/metadata/labels/big","value":"{}"}}"#,
                "v".repeat(100_000)
            ),
            r#"{"op":"copy","from":"/metadata/labels","path":"/spec/x0"}"#.to_string(),
        ];
        for i in 1..10 {
            doubling.push(format!(
                r#"{{"op":"copy","from":"/spec","path":"/spec/x{i}"}}"#
            ));
        }
        let e = patch_vm(&vm, &doubling).expect_err("too large");
        assert!(matches!(e, PatchError::TooLarge { index: 5, .. }), "{e}");
        let long = format!(
            r#"{{"op":"add","path":"/status","value":"{}"}}"#,
            "x".repeat(10_000)
        );
        assert!(
            refused(&long).to_string().len() < 600,
            "a long patch is cut in the message"
        );
    }

    #[test]
    fn a_restored_vm_carries_the_contents_memory_reference_and_only_a_valid_one() {
        use kubevirt_api::memsnap;
        let mut vm = new_target_vm(&snap_vm(), "new", "ns", &BTreeMap::new(), "r-u");
        vm.annotations_mut()
            .insert(memsnap::RESTORE.into(), "stale".into());
        let mut content = VirtualMachineSnapshotContent::new("c", Default::default());
        set_memory_reference(&mut vm, &content);
        assert!(!vm.annotations().contains_key(memsnap::RESTORE));
        let r = memsnap::MemoryRef {
            node: "node01".into(),
            key: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        };
        content
            .annotations_mut()
            .insert(memsnap::CONTENT_STATE.into(), r.to_annotation());
        set_memory_reference(&mut vm, &content);
        assert_eq!(
            vm.annotations().get(memsnap::RESTORE),
            Some(&r.to_annotation())
        );
        // A content annotation written by hand that is a path is not carried over.
        content.annotations_mut().insert(
            memsnap::CONTENT_STATE.into(),
            r#"{"node":"node01","key":"../../x"}"#.into(),
        );
        set_memory_reference(&mut vm, &content);
        assert!(!vm.annotations().contains_key(memsnap::RESTORE));
    }

    #[test]
    fn names_are_kubevirts() {
        assert_eq!(restore_claim_name("u", "disk"), "restore-u-disk");
        assert_eq!(last_restore_value("r", "u"), "r-u");
    }
}
