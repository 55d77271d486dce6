//! VirtualMachineSnapshot (`snapshot.kubevirt.io/v1beta1`): KubeVirt's
//! pkg/storage/snapshot/snapshot.go and source.go, for a stopped VM (an offline snapshot).
//!
//! The snapshot locks its source VM (finalizer [`SOURCE_FINALIZER`] and
//! `status.snapshotInProgress`), writes a VirtualMachineSnapshotContent
//! `vmsnapshot-content-<snapshot uid>` holding the VM (metadata trimmed, no status) and one
//! `volumeBackup` per PVC/DataVolume volume, and creates one CSI VolumeSnapshot
//! `vmsnapshot-<snapshot uid>-volume-<volume>` per backup, owned by the content. The content is
//! `readyToUse` once every VolumeSnapshot is; the snapshot then turns `Succeeded` and the VM is
//! unlocked. The CSI side (copying the data) is `kubevirt-cdi-controller`'s snapshotter.
//!
//! A running VM is snapshotted online: after the lock, the guest is frozen through virt-api's
//! `freeze` subresource (guest-agent fsfreeze when the agent is connected, else a drained QMP
//! `stop`; the launcher ends the freeze by itself at the timeout) before the VolumeSnapshots
//! are created, and unfrozen once they all have their `creationTime`. `status.indications`:
//! `Online` and `GuestAgent` or `NoGuestAgent`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kubevirt_api::memsnap;
use kubevirt_api::volumesnapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};
use kubevirt_api::{
    SnapshotCondition, SnapshotVirtualMachine, VirtualMachine, VirtualMachineInstance,
    VirtualMachineSnapshot, VirtualMachineSnapshotContent, VirtualMachineSnapshotContentSpec,
    Volume, VolumeBackup,
};
use serde_json::json;

use crate::{Context, Error};

/// KubeVirt's `vmSnapshotFinalizer`.
pub const SNAPSHOT_FINALIZER: &str = "snapshot.kubevirt.io/vmsnapshot-protection";
/// KubeVirt's `sourceFinalizer`: on the VM while a snapshot of it is being taken.
pub const SOURCE_FINALIZER: &str = "snapshot.kubevirt.io/snapshot-source-protection";
/// KubeVirt's `snapshotv1.DefaultFailureDeadline`.
pub const DEFAULT_FAILURE_DEADLINE: Duration = Duration::from_secs(300);
/// KubeVirt's `vmSnapshotDeadlineExceededError`.
pub const DEADLINE_EXCEEDED: &str = "snapshot deadline exceeded";
/// KubeVirt's `snapshotv1.Indication`s of an online snapshot.
pub const INDICATION_ONLINE: &str = "Online";
pub const INDICATION_GUEST_AGENT: &str = "GuestAgent";
pub const INDICATION_NO_GUEST_AGENT: &str = "NoGuestAgent";

pub const PHASE_IN_PROGRESS: &str = "InProgress";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED: &str = "Failed";

/// KubeVirt's `GetVMSnapshotContentName`.
pub fn content_name(snapshot_uid: &str) -> String {
    format!("vmsnapshot-content-{snapshot_uid}")
}

/// The VolumeSnapshot of one volume (KubeVirt's `vmsnapshot-%s-volume-%s`).
pub fn volume_snapshot_name(snapshot_uid: &str, volume: &str) -> String {
    format!("vmsnapshot-{snapshot_uid}-volume-{volume}")
}

/// A volume of the VM, as the snapshot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Included {
    pub volume: String,
    pub claim: String,
}

/// The volumes of a VM split as KubeVirt's `snapshotVolumes` does: PVC and DataVolume volumes
/// are included (their claim is the DataVolume's name); volumes that hold no persistent data
/// (containerDisk, cloudInit*, configMap, secret, serviceAccount, downwardAPI/Metrics,
/// sysprep, emptyDisk, ephemeral) are excluded. Any other source (hostDisk, containerPath,
/// memoryDump) cannot be snapshotted: the error names the volume.
pub fn classify(volumes: &[Volume]) -> Result<(Vec<Included>, Vec<String>), String> {
    let mut included = Vec::new();
    let mut excluded = Vec::new();
    for v in volumes {
        if let Some(p) = &v.persistent_volume_claim {
            included.push(Included {
                volume: v.name.clone(),
                claim: p.claim_name.clone(),
            });
        } else if let Some(d) = &v.data_volume {
            included.push(Included {
                volume: v.name.clone(),
                claim: d.name.clone(),
            });
        } else if v.container_disk.is_some()
            || v.cloud_init_no_cloud.is_some()
            || v.cloud_init_config_drive.is_some()
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.service_account.is_some()
            || v.downward_api.is_some()
            || v.downward_metrics.is_some()
            || v.sysprep.is_some()
            || v.empty_disk.is_some()
            || v.ephemeral.is_some()
        {
            excluded.push(v.name.clone());
        } else {
            // KubeVirt's VolumeSnapshotStatus reason for such a volume.
            return Err(format!(
                "Snapshot is not supported for this volumeSource type [{}]",
                v.name
            ));
        }
    }
    Ok((included, excluded))
}

/// A Go `time.Duration` string as `metav1.Duration` serializes it (`5m0s`, `1h`, `90s`,
/// `1.5m`, `300ms`). Negative or unparsable values are `None`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let uend = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..uend] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[uend..];
        total += n * unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Whether a snapshot created at `created` is past its deadline at `now`.
pub fn deadline_exceeded(created: Timestamp, deadline: Duration, now: Timestamp) -> bool {
    let d = SignedDuration::try_from(deadline).unwrap_or(SignedDuration::MAX);
    created
        .checked_add(d)
        .map(|until| now > until)
        .unwrap_or(false)
}

/// The snapshot's deadline: `spec.failureDeadline`, or 5 minutes. `0` means none (KubeVirt).
pub fn failure_deadline(snap: &VirtualMachineSnapshot) -> Option<Duration> {
    match snap.spec.failure_deadline.as_deref() {
        None => Some(DEFAULT_FAILURE_DEADLINE),
        Some(s) => match parse_go_duration(s) {
            Some(Duration::ZERO) => None,
            Some(d) => Some(d),
            None => Some(DEFAULT_FAILURE_DEADLINE),
        },
    }
}

/// `conditions` with the condition of `type_` set; its `lastTransitionTime` is kept when its
/// status does not change.
pub fn set_condition(
    conditions: &mut Vec<SnapshotCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.r#type == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.r#type != type_);
    conditions.push(SnapshotCondition {
        last_probe_time: None,
        last_transition_time: Some(since),
        message: None,
        reason: Some(reason.to_string()),
        status: status.to_string(),
        r#type: type_.to_string(),
    });
}

/// The VM as the content keeps it (KubeVirt's `vmSnapshotSource.Spec`): name, namespace, uid,
/// generation, labels and annotations, its spec; no status, no managed fields.
pub fn trimmed_vm(vm: &VirtualMachine) -> SnapshotVirtualMachine {
    SnapshotVirtualMachine {
        metadata: Some(ObjectMeta {
            name: vm.metadata.name.clone(),
            namespace: vm.metadata.namespace.clone(),
            uid: vm.metadata.uid.clone(),
            generation: vm.metadata.generation,
            labels: vm.metadata.labels.clone(),
            annotations: vm.metadata.annotations.clone(),
            ..Default::default()
        }),
        spec: Some(vm.spec.clone()),
        status: None,
    }
}

fn vm_volumes(vm: &VirtualMachine) -> &[Volume] {
    vm.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?)
}

/// Adds or removes a finalizer with a resourceVersion precondition (a conflict retries).
pub(crate) async fn set_finalizer<K>(
    api: &Api<K>,
    obj: &K,
    finalizer: &str,
    present: bool,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut list: Vec<String> = obj.meta().finalizers.clone().unwrap_or_default();
    let has = list.iter().any(|f| f == finalizer);
    if has == present {
        return Ok(());
    }
    if present {
        list.push(finalizer.to_string());
    } else {
        list.retain(|f| f != finalizer);
    }
    let patch = json!({"metadata": {
        "finalizers": list,
        "resourceVersion": obj.meta().resource_version,
    }});
    let name = obj.meta().name.clone().unwrap_or_default();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 && !present => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `/apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/ACTION`.
fn vmi_subresource(ns: &str, name: &str, action: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{action}"
    )
}

/// Asks virt-api to freeze the VMI (see the module documentation); the launcher unfreezes it
/// by itself after `timeout` (at most [`kubevirt_api::freeze::MAX_UNFREEZE_TIMEOUT`]).
async fn freeze(ctx: &Context, ns: &str, name: &str, timeout: Duration) -> Result<(), Error> {
    let body = serde_json::to_vec(&kubevirt_api::freeze::FreezeUnfreezeTimeout::new(timeout))?;
    subresource_put(ctx, ns, name, "freeze", body).await
}

async fn unfreeze(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    subresource_put(ctx, ns, name, "unfreeze", b"{}".to_vec()).await
}

/// A memory snapshot ([`memsnap`]): asks virt-api to have the VMI's node agent save the
/// guest's memory into its store under `key` (the snapshot's uid), leaving the guest paused
/// with its disks released; idempotent (a saved key answers at once).
async fn save_memory(
    ctx: &Context,
    ns: &str,
    vmi: &VirtualMachineInstance,
    key: &str,
) -> Result<memsnap::MemoryRef, Error> {
    let name = crate::name_of(&vmi.metadata)?;
    let node = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or(Error::MissingField("status.nodeName"))?;
    let body = serde_json::to_vec(&memsnap::SaveMemory { key: key.into() })?;
    subresource_put(ctx, ns, &name, memsnap::SAVE_SUBRESOURCE, body).await?;
    Ok(memsnap::MemoryRef {
        node,
        key: key.into(),
    })
}

/// Runs the guest on after [`save_memory`] (if it ran when saved).
async fn resume_memory(ctx: &Context, ns: &str, name: &str, key: &str) -> Result<(), Error> {
    let body = serde_json::to_vec(&memsnap::SaveMemory { key: key.into() })?;
    subresource_put(ctx, ns, name, memsnap::RESUME_SUBRESOURCE, body).await
}

/// Why a memory snapshot of a VM that does not run fails.
pub fn memory_needs_running(vm: &str) -> String {
    format!(
        "a memory snapshot ({}: \"true\") needs a running VM; {vm} is not running",
        memsnap::MEMORY
    )
}

async fn subresource_put(
    ctx: &Context,
    ns: &str,
    name: &str,
    action: &str,
    body: Vec<u8>,
) -> Result<(), Error> {
    let req = http::Request::put(vmi_subresource(ns, name, action))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    ctx.client.request_text(req).await?;
    Ok(())
}

/// The indications of an online snapshot of `vmi` (KubeVirt's order).
pub fn online_indications(vmi: &VirtualMachineInstance) -> Vec<String> {
    let agent = vmi
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.r#type == kubevirt_api::status::condition::AGENT_CONNECTED && c.status == "True"
            })
        });
    vec![
        INDICATION_ONLINE.to_string(),
        if agent {
            INDICATION_GUEST_AGENT
        } else {
            INDICATION_NO_GUEST_AGENT
        }
        .to_string(),
    ]
}

/// Releases the VM if this snapshot holds it.
async fn unlock(vms: &Api<VirtualMachine>, vm_name: &str, snap: &str) -> Result<(), Error> {
    let Some(vm) = get_opt(vms, vm_name).await? else {
        return Ok(());
    };
    let ours = vm
        .status
        .as_ref()
        .and_then(|s| s.snapshot_in_progress.as_deref())
        == Some(snap);
    if ours {
        kubevirt_runtime::status::write_status(vms, vm_name, json!({"snapshotInProgress": null}))
            .await?;
    }
    let other = vm
        .status
        .as_ref()
        .and_then(|s| s.snapshot_in_progress.as_deref())
        .is_some_and(|s| s != snap);
    if !other {
        let vm = vms.get(vm_name).await?;
        set_finalizer(vms, &vm, SOURCE_FINALIZER, false).await?;
    }
    Ok(())
}

pub async fn reconcile(
    snap: Arc<VirtualMachineSnapshot>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&snap.metadata)?;
    let name = crate::name_of(&snap.metadata)?;
    let uid = crate::uid_of(&snap.metadata)?;
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(ctx.client.clone(), &ns);
    let vss: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let source_is_vm = snap.spec.source.kind == "VirtualMachine"
        && snap.spec.source.api_group.as_deref()
            == Some(kubevirt_api::admitters::snapshot::KUBEVIRT_GROUP);
    let vm_name = snap.spec.source.name.clone();
    let cname = content_name(&uid);

    let online = old_online(&snap);
    let memory = memsnap::wanted(snap.metadata.annotations.as_ref()).then_some(uid.as_str());
    if snap.metadata.deletion_timestamp.is_some() {
        if source_is_vm {
            if online {
                end_freeze(&ctx, &vms, &ns, &vm_name, &name, memory).await;
            }
            unlock(&vms, &vm_name, &name).await?;
        }
        if snap.spec.deletion_policy.as_deref() != Some("Retain") {
            match contents.delete(&cname, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        set_finalizer(&snaps, snap.as_ref(), SNAPSHOT_FINALIZER, false).await?;
        return Ok(Action::await_change());
    }
    set_finalizer(&snaps, snap.as_ref(), SNAPSHOT_FINALIZER, true).await?;

    let old = snap.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut conditions = status.conditions.take().unwrap_or_default();
    let now = Timestamp::now();
    let phase = old.phase.as_deref();
    if phase == Some(PHASE_SUCCEEDED) || phase == Some(PHASE_FAILED) {
        if source_is_vm {
            unlock(&vms, &vm_name, &name).await?;
        }
        // Follow the content (a VolumeSnapshot deleted under it makes it not ready).
        if let Some(c) = get_opt(&contents, &cname).await? {
            let ready = c.status.as_ref().and_then(|s| s.ready_to_use);
            if phase == Some(PHASE_SUCCEEDED) && ready != old.ready_to_use {
                status.ready_to_use = ready;
                set_condition(
                    &mut conditions,
                    "Ready",
                    ready == Some(true),
                    if ready == Some(true) {
                        "Ready"
                    } else {
                        "Not ready"
                    },
                    now,
                );
                status.conditions = Some(conditions);
                kubevirt_runtime::status::write_status(&snaps, &name, &status).await?;
            }
        }
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    let fail = |status: &mut kubevirt_api::VirtualMachineSnapshotStatus,
                conditions: &mut Vec<SnapshotCondition>,
                message: &str| {
        status.phase = Some(PHASE_FAILED.into());
        status.ready_to_use = Some(false);
        status.error = Some(kubevirt_api::Error {
            message: Some(message.to_string()),
            time: Some(Time(now)),
        });
        set_condition(conditions, "Failure", true, message, now);
        set_condition(conditions, "Progressing", false, "Operation failed", now);
        set_condition(conditions, "Ready", false, "Not ready", now);
    };
    status.phase = Some(PHASE_IN_PROGRESS.into());
    if status.ready_to_use.is_none() {
        status.ready_to_use = Some(false);
    }
    let created = snap
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut requeue = Some(Duration::from_secs(2));
    if !source_is_vm {
        // Admission refuses these; an object stored before that rule is failed here.
        fail(
            &mut status,
            &mut conditions,
            &format!(
                "unexpected snapshot source {}/{}",
                snap.spec.source.api_group.as_deref().unwrap_or(""),
                snap.spec.source.kind
            ),
        );
    } else if failure_deadline(&snap).is_some_and(|d| deadline_exceeded(created, d, now)) {
        fail(&mut status, &mut conditions, DEADLINE_EXCEEDED);
        if online {
            end_freeze(&ctx, &vms, &ns, &vm_name, &name, memory).await;
        }
        unlock(&vms, &vm_name, &name).await?;
    } else if let Some(vm) = get_opt(&vms, &vm_name).await? {
        status.source_uid = vm.metadata.uid.clone();
        match classify(vm_volumes(&vm)) {
            Err(message) => {
                fail(&mut status, &mut conditions, &message);
                ctx.event(snap.as_ref(), EventType::Warning, "SnapshotFailed", message)
                    .await;
                unlock(&vms, &vm_name, &name).await?;
            }
            Ok((included, excluded)) => {
                let held_by = vm
                    .status
                    .as_ref()
                    .and_then(|s| s.snapshot_in_progress.clone());
                let restoring = vm
                    .status
                    .as_ref()
                    .and_then(|s| s.restore_in_progress.clone());
                let vmi = get_opt(&vmis, &vm_name).await?;
                if let Some(other) = held_by.filter(|h| h != &name) {
                    set_condition(
                        &mut conditions,
                        "Progressing",
                        false,
                        &format!("Source not locked snapshot {other:?} in progress"),
                        now,
                    );
                } else if let Some(r) = restoring {
                    set_condition(
                        &mut conditions,
                        "Progressing",
                        false,
                        &format!("Source not locked vm restore {r} in progress"),
                        now,
                    );
                } else if memory.is_some() && vmi.is_none() && !online {
                    // A memory snapshot of a stopped VM has no memory to save: refused,
                    // rather than a disk-only snapshot the user did not ask for.
                    let message = memory_needs_running(&vm_name);
                    fail(&mut status, &mut conditions, &message);
                    ctx.event(snap.as_ref(), EventType::Warning, "SnapshotFailed", message)
                        .await;
                    unlock(&vms, &vm_name, &name).await?;
                } else {
                    // Lock the source.
                    set_finalizer(&vms, &vm, SOURCE_FINALIZER, true).await?;
                    kubevirt_runtime::status::write_status(
                        &vms,
                        &vm_name,
                        json!({"snapshotInProgress": name}),
                    )
                    .await?;
                    set_condition(
                        &mut conditions,
                        "Progressing",
                        true,
                        "Source locked and operation in progress",
                        now,
                    );
                    // Online: the guest is frozen before its volumes are snapshotted. A
                    // snapshot that began offline stays offline (its content is the moment
                    // the VM was stopped); one that began online goes on freezing.
                    let cut = get_opt(&contents, &cname)
                        .await?
                        .and_then(|c| c.status)
                        .and_then(|s| s.creation_time)
                        .is_some();
                    let started = get_opt(&contents, &cname).await?.is_some();
                    let online_now = match &vmi {
                        Some(vmi) if !started || online => {
                            if status.indications.is_none() {
                                let indications = online_indications(vmi);
                                // Recorded before the freeze: a pass that fails after it
                                // must still know the snapshot is online, to unfreeze.
                                kubevirt_runtime::status::write_status(
                                    &snaps,
                                    &name,
                                    json!({"indications": indications}),
                                )
                                .await?;
                                status.indications = Some(indications);
                            }
                            true
                        }
                        _ => false,
                    };
                    let mut saved = None;
                    if online_now && !cut {
                        match (memory, &vmi) {
                            // Memory: saved with the guest stopped, its disks released; the
                            // disks are then snapshotted as they are at that instant.
                            (Some(key), Some(vmi)) => {
                                match save_memory(&ctx, &ns, vmi, key).await {
                                    Ok(r) => saved = Some(r),
                                    // The launcher refused (an ephemeral writable disk, a changed
                                    // machine, a migration) or QEMU failed: the guest runs on,
                                    // and the snapshot fails with the reason.
                                    Err(Error::Kube(kube::Error::Api(e)))
                                        if matches!(e.code, 400 | 500) =>
                                    {
                                        let message =
                                            format!("saving the guest's memory: {}", e.message);
                                        fail(&mut status, &mut conditions, &message);
                                        ctx.event(
                                            snap.as_ref(),
                                            EventType::Warning,
                                            "SnapshotFailed",
                                            message,
                                        )
                                        .await;
                                        unlock(&vms, &vm_name, &name).await?;
                                        status.conditions = Some(conditions);
                                        kubevirt_runtime::status::write_status(
                                            &snaps, &name, &status,
                                        )
                                        .await?;
                                        return Ok(Action::await_change());
                                    }
                                    Err(e) => return Err(e),
                                }
                            }
                            _ => {
                                let timeout =
                                    failure_deadline(&snap).unwrap_or(DEFAULT_FAILURE_DEADLINE);
                                freeze(&ctx, &ns, &vm_name, timeout).await?;
                            }
                        }
                    }
                    let content = ensure_content(
                        &ctx,
                        &snap,
                        &vm,
                        &cname,
                        &included,
                        &contents,
                        &vss,
                        now,
                        saved.as_ref(),
                    )
                    .await?;
                    if content.metadata.uid.is_some() {
                        status.virtual_machine_snapshot_content_name = Some(cname.clone());
                    }
                    let cs = content.status.clone().unwrap_or_default();
                    status.ready_to_use = Some(cs.ready_to_use == Some(true));
                    status.creation_time = cs.creation_time.clone();
                    status.error = cs.error.clone();
                    if cs.creation_time.is_some() {
                        if online_now {
                            match memory {
                                Some(key) => resume_memory(&ctx, &ns, &vm_name, key).await?,
                                None => unfreeze(&ctx, &ns, &vm_name).await?,
                            }
                        }
                        status.phase = Some(PHASE_SUCCEEDED.into());
                        status.source_indications = None;
                        status.snapshot_volumes = Some(kubevirt_api::SnapshotVolumesLists {
                            included_volumes: Some(
                                included.iter().map(|i| i.volume.clone()).collect(),
                            ),
                            excluded_volumes: Some(excluded),
                        });
                        set_condition(
                            &mut conditions,
                            "Progressing",
                            false,
                            "Operation complete",
                            now,
                        );
                        unlock(&vms, &vm_name, &name).await?;
                        ctx.event(
                            snap.as_ref(),
                            EventType::Normal,
                            "SuccessfulVirtualMachineSnapshot",
                            format!("Successfully completed VirtualMachineSnapshot {name}"),
                        )
                        .await;
                        requeue = None;
                    }
                }
            }
        }
    } else {
        set_condition(
            &mut conditions,
            "Progressing",
            false,
            "Source does not exist",
            now,
        );
        requeue = Some(Duration::from_secs(5));
    }
    if status.phase.as_deref() == Some(PHASE_FAILED) {
        requeue = None;
    }
    let ready = status.ready_to_use == Some(true);
    if status.phase.as_deref() != Some(PHASE_FAILED) {
        set_condition(
            &mut conditions,
            "Ready",
            ready,
            if ready { "Ready" } else { "Not ready" },
            now,
        );
    }
    if status.error.is_some() && status.phase.as_deref() == Some(PHASE_IN_PROGRESS) {
        set_condition(&mut conditions, "Progressing", false, "In error state", now);
    }
    status.conditions = Some(conditions);
    if status != old {
        kubevirt_runtime::status::write_status(&snaps, &name, &status).await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(60)),
    })
}

/// Whether the snapshot was taken online (its `Online` indication, written when it began).
fn old_online(snap: &VirtualMachineSnapshot) -> bool {
    snap.status
        .as_ref()
        .and_then(|s| s.indications.as_ref())
        .is_some_and(|i| i.iter().any(|x| x == INDICATION_ONLINE))
}

/// Best effort, for a snapshot that ends without succeeding: unfreeze the guest if this
/// snapshot still holds the VM (the launcher's timer is the backstop).
async fn end_freeze(
    ctx: &Context,
    vms: &Api<VirtualMachine>,
    ns: &str,
    vm: &str,
    snap: &str,
    memory: Option<&str>,
) {
    let ours = matches!(get_opt(vms, vm).await, Ok(Some(v)) if v
        .status
        .as_ref()
        .and_then(|s| s.snapshot_in_progress.as_deref())
        == Some(snap));
    if ours {
        let ended = match memory {
            Some(key) => resume_memory(ctx, ns, vm, key).await,
            None => unfreeze(ctx, ns, vm).await,
        };
        if let Err(e) = ended {
            tracing::info!(namespace = ns, vm, error = %e, "unfreeze after a failed snapshot");
        }
    }
}

/// Creates the content and its VolumeSnapshots (idempotent), and brings the content's status
/// up to date with them.
#[allow(clippy::too_many_arguments)]
async fn ensure_content(
    ctx: &Context,
    snap: &VirtualMachineSnapshot,
    vm: &VirtualMachine,
    cname: &str,
    included: &[Included],
    contents: &Api<VirtualMachineSnapshotContent>,
    vss: &Api<VolumeSnapshot>,
    now: Timestamp,
    memory: Option<&memsnap::MemoryRef>,
) -> Result<VirtualMachineSnapshotContent, Error> {
    let ns = crate::namespace_of(&snap.metadata)?;
    let uid = crate::uid_of(&snap.metadata)?;
    let name = crate::name_of(&snap.metadata)?;
    let content = match get_opt(contents, cname).await? {
        Some(c) => c,
        None => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let mut backups = Vec::new();
            for inc in included {
                let Some(pvc) = get_opt(&claims, &inc.claim).await? else {
                    // KubeVirt's ErrVolumeDoesntExist: wait for it (the deadline fails us).
                    return Ok(VirtualMachineSnapshotContent::new(
                        cname,
                        Default::default(),
                    ));
                };
                backups.push(VolumeBackup {
                    volume_name: inc.volume.clone(),
                    volume_snapshot_name: Some(volume_snapshot_name(&uid, &inc.volume)),
                    persistent_volume_claim: kubevirt_api::PersistentVolumeClaim {
                        metadata: Some(ObjectMeta {
                            name: pvc.metadata.name.clone(),
                            namespace: pvc.metadata.namespace.clone(),
                            labels: pvc.metadata.labels.clone(),
                            annotations: pvc.metadata.annotations.clone(),
                            ..Default::default()
                        }),
                        spec: pvc.spec.clone(),
                    },
                });
            }
            let mut c = VirtualMachineSnapshotContent::new(
                cname,
                VirtualMachineSnapshotContentSpec {
                    source: kubevirt_api::SourceSpec {
                        virtual_machine: Some(trimmed_vm(vm)),
                    },
                    virtual_machine_snapshot_name: Some(name.clone()),
                    volume_backups: Some(backups),
                },
            );
            c.metadata.namespace = Some(ns.clone());
            if let Some(m) = memory {
                c.metadata.annotations = Some(BTreeMap::from([(
                    memsnap::CONTENT_STATE.to_string(),
                    m.to_annotation(),
                )]));
            }
            contents.create(&PostParams::default(), &c).await?
        }
    };
    if content.metadata.uid.is_none() {
        return Ok(content); // a claim is missing; nothing created yet
    }
    let owner = OwnerReference {
        api_version: "snapshot.kubevirt.io/v1beta1".into(),
        kind: "VirtualMachineSnapshotContent".into(),
        name: cname.to_string(),
        uid: crate::uid_of(&content.metadata)?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut statuses = Vec::new();
    let mut all_ready = true;
    let mut latest: Option<Time> = None;
    let mut error = None;
    for b in content.spec.volume_backups.iter().flatten() {
        let Some(vs_name) = b.volume_snapshot_name.clone() else {
            continue;
        };
        let vs = match get_opt(vss, &vs_name).await? {
            Some(v) => v,
            None => {
                let claim = b
                    .persistent_volume_claim
                    .metadata
                    .as_ref()
                    .and_then(|m| m.name.clone())
                    .ok_or(Error::MissingField(
                        "volumeBackups.persistentVolumeClaim.metadata.name",
                    ))?;
                let mut v = VolumeSnapshot::new(
                    &vs_name,
                    VolumeSnapshotSpec {
                        source: VolumeSnapshotSource {
                            persistent_volume_claim_name: Some(claim),
                            volume_snapshot_content_name: None,
                        },
                        volume_snapshot_class_name: None,
                    },
                );
                v.metadata.namespace = Some(ns.clone());
                v.metadata.owner_references = Some(vec![owner.clone()]);
                vss.create(&PostParams::default(), &v).await?
            }
        };
        let st = vs.status.clone().unwrap_or_default();
        let ready = st.ready_to_use == Some(true);
        all_ready &= ready;
        if let Some(t) = &st.creation_time {
            if latest.as_ref().is_none_or(|l| l.0 < t.0) {
                latest = Some(t.clone());
            }
        }
        let err = st.error.as_ref().and_then(|e| e.message.clone());
        if let Some(m) = &err {
            error = Some(format!("VolumeSnapshot {vs_name} error: {m}"));
        }
        statuses.push(kubevirt_api::SnapshotVolumeSnapshotStatus {
            volume_snapshot_name: vs_name,
            creation_time: st.creation_time.clone(),
            ready_to_use: Some(ready),
            error: err.map(|m| kubevirt_api::Error {
                message: Some(m),
                time: Some(Time(now)),
            }),
        });
    }
    let old = content.status.clone().unwrap_or_default();
    let mut cs = old.clone();
    cs.ready_to_use = Some(all_ready);
    if all_ready && cs.creation_time.is_none() {
        cs.creation_time = Some(latest.unwrap_or(Time(now)));
    }
    cs.error = error.map(|m| kubevirt_api::Error {
        message: Some(m),
        time: Some(Time(now)),
    });
    if cs.error.as_ref().map(|e| &e.message) == old.error.as_ref().map(|e| &e.message) {
        cs.error = old.error.clone();
    }
    cs.volume_snapshot_status = Some(statuses);
    if cs != old {
        return Ok(kubevirt_runtime::status::write_status(contents, cname, &cs).await?);
    }
    Ok(content)
}

pub fn error_policy(snap: Arc<VirtualMachineSnapshot>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(snapshot = %snap.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::{DataVolumeSource, HostDisk, PersistentVolumeClaimVolumeSource};

    fn vol(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_kubevirts() {
        assert_eq!(content_name("u1"), "vmsnapshot-content-u1");
        assert_eq!(
            volume_snapshot_name("u1", "disk0"),
            "vmsnapshot-u1-volume-disk0"
        );
    }

    #[test]
    fn claims_are_included_ephemeral_sources_excluded() {
        let mut pvc = vol("root");
        pvc.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: "root-claim".into(),
            ..Default::default()
        });
        let mut dv = vol("data");
        dv.data_volume = Some(DataVolumeSource {
            name: "data-dv".into(),
            ..Default::default()
        });
        let mut cd = vol("boot");
        cd.container_disk = Some(Default::default());
        let mut ci = vol("cloudinit");
        ci.cloud_init_no_cloud = Some(Default::default());
        let (inc, exc) = classify(&[pvc, cd, dv, ci]).expect("supported volumes");
        assert_eq!(
            inc,
            vec![
                Included {
                    volume: "root".into(),
                    claim: "root-claim".into()
                },
                Included {
                    volume: "data".into(),
                    claim: "data-dv".into()
                },
            ]
        );
        assert_eq!(exc, vec!["boot".to_string(), "cloudinit".to_string()]);
    }

    #[test]
    fn a_host_disk_fails_the_snapshot_naming_the_volume() {
        let mut hd = vol("scratch");
        hd.host_disk = Some(HostDisk::default());
        let err = classify(&[hd]).expect_err("hostDisk is not snapshottable");
        assert!(err.contains("[scratch]"), "{err}");
        // A volume with no source at all is not silently skipped either.
        assert!(classify(&[vol("empty")]).is_err());
    }

    #[test]
    fn go_durations_parse_as_metav1_writes_them() {
        assert_eq!(parse_go_duration("5m0s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h1m"), Some(Duration::from_secs(3660)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "-5s", "5x", "s", "1e400h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_deadline_defaults_to_five_minutes_and_zero_disables_it() {
        let mut s = VirtualMachineSnapshot::new("s", Default::default());
        assert_eq!(failure_deadline(&s), Some(DEFAULT_FAILURE_DEADLINE));
        s.spec.failure_deadline = Some("1m".into());
        assert_eq!(failure_deadline(&s), Some(Duration::from_secs(60)));
        s.spec.failure_deadline = Some("0s".into());
        assert_eq!(failure_deadline(&s), None);
        let t0 = Timestamp::from_second(1_000_000).expect("valid");
        let later = Timestamp::from_second(1_000_061).expect("valid");
        assert!(deadline_exceeded(t0, Duration::from_secs(60), later));
        assert!(!deadline_exceeded(t0, Duration::from_secs(300), later));
        assert!(!deadline_exceeded(t0, Duration::MAX, later));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0 = Timestamp::from_second(1_000_000).expect("valid");
        let t1 = Timestamp::from_second(1_000_100).expect("valid");
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "Not ready", t0);
        set_condition(&mut c, "Ready", false, "Not ready", t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Some(Time(t0)));
        set_condition(&mut c, "Ready", true, "Ready", t1);
        assert_eq!(c[0].last_transition_time, Some(Time(t1)));
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn the_content_keeps_the_vm_without_status_or_managed_fields() {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.metadata.uid = Some("u".into());
        vm.metadata.resource_version = Some("7".into());
        vm.metadata.finalizers = Some(vec![SOURCE_FINALIZER.into()]);
        vm.status = Some(Default::default());
        let t = trimmed_vm(&vm);
        let m = t.metadata.expect("metadata");
        assert_eq!(m.uid.as_deref(), Some("u"));
        assert_eq!(m.resource_version, None);
        assert_eq!(m.finalizers, None);
        assert!(t.status.is_none());
    }
}
