//! VirtualMachineClone (`clone.kubevirt.io/v1beta1`): KubeVirt's
//! pkg/virt-controller/watch/clone (clone.go, vm-target.go, util.go).
//!
//! A clone rides on snapshots: a VM source is snapshotted first (`tmp-snapshot-<clone uid>`,
//! owned by the clone), a VirtualMachineSnapshot source is used as it is; then a
//! VirtualMachineRestore `tmp-restore-<clone uid>` to a new VM (the target) carries the
//! clone's changes as JSON patches ([`generate_patches`]): MAC addresses and the SMBIOS serial
//! and firmware UUID cleared (so the new VM gets its own) or set, labels and annotations
//! filtered, then the user's `patches`. Once the target exists and its claims are bound the
//! temporary restore (and snapshot) are deleted.
//!
//! Phases: `SnapshotInProgress` → `RestoreInProgress` → `CreatingTargetVM` → `Succeeded`, or
//! `Failed`; conditions `Progressing`/`Ready` with KubeVirt's reasons.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, TypedLocalObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::admitters::clone::target_name_for;
use kubevirt_api::{
    SnapshotVirtualMachine, VirtualMachine, VirtualMachineClone, VirtualMachineCloneSpec,
    VirtualMachineCloneStatus, VirtualMachineRestore, VirtualMachineRestoreSpec,
    VirtualMachineSnapshot, VirtualMachineSnapshotContent, VirtualMachineSnapshotSpec,
};
use serde_json::json;

use crate::restore::LAST_RESTORE_ANNOTATION;
use crate::snapshot::{set_condition, PHASE_FAILED};
use crate::{Context, Error};

pub const PHASE_SNAPSHOT_IN_PROGRESS: &str = "SnapshotInProgress";
pub const PHASE_RESTORE_IN_PROGRESS: &str = "RestoreInProgress";
pub const PHASE_CREATING_TARGET_VM: &str = "CreatingTargetVM";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED_CLONE: &str = "Failed";

const VM_KIND: &str = "VirtualMachine";
const SNAPSHOT_KIND: &str = "VirtualMachineSnapshot";

/// KubeVirt's `generateSnapshotName`.
pub fn snapshot_name(clone_uid: &str) -> String {
    format!("tmp-snapshot-{clone_uid}")
}

/// KubeVirt's `generateRestoreName`.
pub fn restore_name(clone_uid: &str) -> String {
    format!("tmp-restore-{clone_uid}")
}

/// The target VM's name: `spec.target.name`, which the API server's create mutator fills
/// (KubeVirt's `clone-<source>-<5 random characters>`); a clone stored without one gets a
/// suffix taken from its uid.
pub fn target_name(clone: &VirtualMachineClone) -> String {
    match clone.spec.target.as_ref().map(|t| t.name.as_str()) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            let uid = clone.metadata.uid.as_deref().unwrap_or_default();
            let suffix: String = uid
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(5)
                .collect();
            target_name_for(&clone.spec.source.name, &suffix)
        }
    }
}

/// RFC 6901 escaping of one pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether a label/annotation key passes the clone's filters, as documented by KubeVirt
/// (user-guide "Label & Annotation filters"): `*` alone matches every key, a trailing `*`
/// any key with that prefix, otherwise the key itself; `!` first negates and wins. No filters
/// keep every key. (KubeVirt's code feeds the filter to Go's unanchored `regexp.MatchString`,
/// so `app` also matches `myapp`; we follow the documented rule, and a filter is never
/// compiled as a regular expression.)
pub fn key_kept(key: &str, filters: &[String]) -> bool {
    let matches = |f: &str| {
        if let Some(prefix) = f.strip_suffix('*') {
            key.starts_with(prefix)
        } else {
            key == f
        }
    };
    let included = filters
        .iter()
        .filter(|f| !f.starts_with('!'))
        .any(|f| matches(f));
    let negated = filters
        .iter()
        .filter_map(|f| f.strip_prefix('!'))
        .filter(|f| !f.is_empty())
        .any(matches);
    included && !negated
}

fn remove_filtered(
    patches: &mut Vec<serde_json::Value>,
    map: Option<&std::collections::BTreeMap<String, String>>,
    filters: Option<&[String]>,
    base: &str,
    skip: Option<&str>,
) {
    let Some(filters) = filters else {
        return;
    };
    for key in map.into_iter().flat_map(|m| m.keys()) {
        if Some(key.as_str()) == skip || key_kept(key, filters) {
            continue;
        }
        patches.push(json!({"op": "remove", "path": format!("{base}/{}", escape(key))}));
    }
}

/// KubeVirt's `generatePatches`: the changes that make the snapshot's VM the clone, as JSON
/// patch operations, then the user's `patches`.
///
/// - every interface's `macAddress` is set to `newMacAddresses[name]`, or removed so the new
///   VM's NICs get their own (KubeVirt writes `""`, which Go's `omitempty` drops: the same);
/// - the firmware `serial` is set to `newSMBiosSerial` or removed, the firmware `uuid`
///   removed (the VM controller derives a new one from the new VM's name);
/// - labels and annotations (and the template's) that the filters do not keep are removed
///   (the last-restore annotation is never a patch: the restore sets it).
pub fn generate_patches(
    source: &SnapshotVirtualMachine,
    spec: &VirtualMachineCloneSpec,
) -> Vec<String> {
    let mut out = Vec::new();
    let vm_spec = source.spec.clone().unwrap_or_default();
    let tmpl_spec = vm_spec.template.spec.clone().unwrap_or_default();
    let ifaces = tmpl_spec
        .domain
        .devices
        .interfaces
        .clone()
        .unwrap_or_default();
    for (i, iface) in ifaces.iter().enumerate() {
        let path = format!("/spec/template/spec/domain/devices/interfaces/{i}/macAddress");
        match spec
            .new_mac_addresses
            .as_ref()
            .and_then(|m| m.get(&iface.name))
            .filter(|m| !m.is_empty())
        {
            Some(mac) => out.push(json!({"op": "add", "path": path, "value": mac})),
            None if iface.mac_address.as_deref().is_some_and(|m| !m.is_empty()) => {
                out.push(json!({"op": "remove", "path": path}))
            }
            None => {}
        }
    }
    if let Some(fw) = &tmpl_spec.domain.firmware {
        let path = "/spec/template/spec/domain/firmware/serial";
        match spec.new_sm_bios_serial.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => out.push(json!({"op": "add", "path": path, "value": s})),
            None if fw.serial.is_some() => out.push(json!({"op": "remove", "path": path})),
            None => {}
        }
    }
    let meta = source.metadata.clone().unwrap_or_default();
    remove_filtered(
        &mut out,
        meta.labels.as_ref(),
        spec.label_filters.as_deref(),
        "/metadata/labels",
        None,
    );
    remove_filtered(
        &mut out,
        meta.annotations.as_ref(),
        spec.annotation_filters.as_deref(),
        "/metadata/annotations",
        Some(LAST_RESTORE_ANNOTATION),
    );
    let tmeta = vm_spec.template.metadata.clone().unwrap_or_default();
    let tfilters = spec.template.as_ref();
    remove_filtered(
        &mut out,
        tmeta.labels.as_ref(),
        tfilters.and_then(|t| t.label_filters.as_deref()),
        "/spec/template/metadata/labels",
        None,
    );
    remove_filtered(
        &mut out,
        tmeta.annotations.as_ref(),
        tfilters.and_then(|t| t.annotation_filters.as_deref()),
        "/spec/template/metadata/annotations",
        None,
    );
    if tmpl_spec
        .domain
        .firmware
        .as_ref()
        .is_some_and(|f| f.uuid.is_some())
    {
        out.push(json!({"op": "remove", "path": "/spec/template/spec/domain/firmware/uuid"}));
    }
    let mut patches: Vec<String> = out.iter().map(|p| p.to_string()).collect();
    patches.extend(spec.patches.clone().unwrap_or_default());
    patches
}

fn owner(clone: &VirtualMachineClone) -> Result<OwnerReference, Error> {
    Ok(OwnerReference {
        api_version: "clone.kubevirt.io/v1beta1".into(),
        kind: "VirtualMachineClone".into(),
        name: crate::name_of(&clone.metadata)?,
        uid: crate::uid_of(&clone.metadata)?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// What one pass found; the status follows from it (KubeVirt's `syncInfoType`).
#[derive(Default)]
struct Sync {
    /// Waiting for the source (KubeVirt's `isClonePending`): event and reason.
    pending: Option<(&'static str, String)>,
    /// The clone cannot succeed (KubeVirt's `isCloneFailing`): event and reason.
    failing: Option<(&'static str, String)>,
    /// Why the clone waits, when a step it waits for says so (the restore's reason).
    waiting: Option<String>,
    snapshot_name: Option<String>,
    snapshot_ready: bool,
    restore_name: Option<String>,
    restore_ready: bool,
    target_name: Option<String>,
    target_created: bool,
    cleaned_up: bool,
}

pub async fn reconcile(
    clone: Arc<VirtualMachineClone>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&clone.metadata)?;
    let name = crate::name_of(&clone.metadata)?;
    let clones: Api<VirtualMachineClone> = Api::namespaced(ctx.client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    if clone.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let old = clone.status.clone().unwrap_or_default();
    let phase = old.phase.clone().unwrap_or_default();
    if phase == PHASE_FAILED_CLONE {
        return Ok(Action::await_change());
    }
    if phase == PHASE_SUCCEEDED && old.restore_name.is_none() {
        // KubeVirt: a clone whose target VM is gone is deleted.
        let target = old
            .target_name
            .clone()
            .unwrap_or_else(|| target_name(&clone));
        if vms.get_opt(&target).await?.is_none() {
            tracing::info!(%ns, clone = %name, %target, "target VM gone; deleting the clone");
            match clones.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::requeue(ctx.config.resync));
    }
    let sync = sync(&ctx, &clone, &ns, &name, &old).await?;
    let now = Timestamp::now();
    let mut status = old.clone();
    let mut conditions = status.conditions.take().unwrap_or_default();
    let mut phase = phase;
    let record = |reason: &'static str, msg: String| {
        let ctx = ctx.clone();
        let clone = clone.clone();
        async move {
            tracing::info!(clone = %clone.name_any(), "{msg}");
            ctx.event(clone.as_ref(), EventType::Normal, reason, msg)
                .await;
        }
    };
    if let Some((event, reason)) = &sync.pending {
        if conditions
            .iter()
            .all(|c| c.reason.as_deref() != Some(reason.as_str()))
        {
            record(event, reason.clone()).await;
        }
        set_condition(&mut conditions, "Progressing", false, "Pending", now);
        set_condition(&mut conditions, "Ready", false, reason, now);
    } else if let Some((event, reason)) = &sync.failing {
        record(event, reason.clone()).await;
        phase = PHASE_FAILED_CLONE.into();
        set_condition(&mut conditions, "Progressing", false, "Failed", now);
        set_condition(&mut conditions, "Ready", false, reason, now);
    } else {
        let reason = sync.waiting.as_deref().unwrap_or("Still processing");
        set_condition(
            &mut conditions,
            "Progressing",
            true,
            "Still processing",
            now,
        );
        set_condition(&mut conditions, "Ready", false, reason, now);
    }
    if phase.is_empty() && sync.pending.is_none() {
        phase = PHASE_SNAPSHOT_IN_PROGRESS.into();
    }
    if phase == PHASE_SNAPSHOT_IN_PROGRESS {
        if let Some(s) = &sync.snapshot_name {
            status.snapshot_name = Some(s.clone());
        }
        if sync.snapshot_ready {
            phase = PHASE_RESTORE_IN_PROGRESS.into();
        }
    }
    if phase == PHASE_RESTORE_IN_PROGRESS {
        if let Some(r) = &sync.restore_name {
            status.restore_name = Some(r.clone());
        }
        if sync.restore_ready {
            phase = PHASE_CREATING_TARGET_VM.into();
        }
    }
    if phase == PHASE_CREATING_TARGET_VM {
        if let Some(t) = &sync.target_name {
            status.target_name = Some(t.clone());
        }
        if sync.target_created {
            phase = PHASE_SUCCEEDED.into();
        }
    }
    if phase == PHASE_SUCCEEDED {
        set_condition(&mut conditions, "Progressing", false, "Ready", now);
        set_condition(&mut conditions, "Ready", true, "Ready", now);
        if status.creation_time.is_none() {
            status.creation_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        }
    }
    if sync.cleaned_up {
        status.snapshot_name = None;
        status.restore_name = None;
    }
    status.phase = (!phase.is_empty()).then_some(phase.clone());
    status.conditions = Some(conditions);
    if status != old {
        if status.phase != old.phase {
            tracing::info!(%ns, clone = %name, phase = %phase, "clone phase");
        }
        // A merge patch: cleared names must be sent as nulls to go.
        let mut v = serde_json::to_value(&status)?;
        if let Some(o) = v.as_object_mut() {
            for k in ["snapshotName", "restoreName"] {
                o.entry(k).or_insert(serde_json::Value::Null);
            }
        }
        // At the version this pass read: a pass working from a stale copy (the watch cache
        // behind a write of ours) would otherwise put an earlier phase back over Succeeded
        // after the temporary restore is gone, and the clone would wait for it for ever.
        // Such a pass gets a 409 and is retried from the current object.
        kubevirt_runtime::status::write_status_at(
            &clones,
            &name,
            clone.metadata.resource_version.as_deref(),
            &v,
        )
        .await?;
    }
    Ok(match phase.as_str() {
        PHASE_FAILED_CLONE => Action::await_change(),
        PHASE_SUCCEEDED if status.restore_name.is_none() => Action::requeue(ctx.config.resync),
        _ => Action::requeue(Duration::from_secs(1)),
    })
}

/// KubeVirt's `syncTargetVM`, one pass: each step either waits (returns) or falls through to
/// the next.
async fn sync(
    ctx: &Context,
    clone: &VirtualMachineClone,
    ns: &str,
    name: &str,
    st: &VirtualMachineCloneStatus,
) -> Result<Sync, Error> {
    let mut out = Sync::default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), ns);
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(ctx.client.clone(), ns);
    let restores: Api<VirtualMachineRestore> = Api::namespaced(ctx.client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let uid = crate::uid_of(&clone.metadata)?;
    let source = &clone.spec.source;
    let from_vm = source.kind == VM_KIND;
    let phase = st.phase.clone().unwrap_or_default();
    // The source (KubeVirt's retrieveCloneInfo): waited for while it does not exist.
    let source_exists = match source.kind.as_str() {
        VM_KIND => vms.get_opt(&source.name).await?.is_some(),
        SNAPSHOT_KIND => snaps.get_opt(&source.name).await?.is_some(),
        other => {
            out.failing = Some((
                "SourceDoesNotExist",
                format!("clone {name} is defined with an unknown source type {other}"),
            ));
            return Ok(out);
        }
    };
    let before_restore = phase.is_empty() || phase == PHASE_SNAPSHOT_IN_PROGRESS;
    if !source_exists && before_restore {
        out.pending = Some((
            "SourceDoesNotExist",
            format!("source doesnt exist: {} {ns}/{}", source.kind, source.name),
        ));
        return Ok(out);
    }
    let snap_name = if from_vm {
        st.snapshot_name
            .clone()
            .unwrap_or_else(|| snapshot_name(&uid))
    } else {
        source.name.clone()
    };
    if before_restore {
        if from_vm && st.snapshot_name.is_none() {
            let snap = VirtualMachineSnapshot {
                metadata: ObjectMeta {
                    name: Some(snap_name.clone()),
                    namespace: Some(ns.into()),
                    owner_references: Some(vec![owner(clone)?]),
                    ..Default::default()
                },
                spec: VirtualMachineSnapshotSpec {
                    source: TypedLocalObjectReference {
                        api_group: Some("kubevirt.io".into()),
                        kind: VM_KIND.into(),
                        name: source.name.clone(),
                    },
                    ..Default::default()
                },
                status: None,
            };
            match snaps.create(&PostParams::default(), &snap).await {
                Ok(_) => {
                    ctx.event(
                        clone,
                        EventType::Normal,
                        "SnapshotCreated",
                        format!("created snapshot {snap_name} for clone {name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            out.snapshot_name = Some(snap_name);
            return Ok(out);
        }
        let Some(snap) = snaps.get_opt(&snap_name).await? else {
            out.waiting = Some(format!(
                "snapshot {snap_name} is not created yet for clone {name}"
            ));
            return Ok(out);
        };
        let ss = snap.status.clone().unwrap_or_default();
        if ss.phase.as_deref() == Some(PHASE_FAILED) {
            let why = ss
                .error
                .and_then(|e| e.message)
                .unwrap_or_else(|| "failed".into());
            out.failing = Some((
                "SnapshotContentInvalid",
                format!("snapshot {snap_name} for clone {name} failed: {why}"),
            ));
            return Ok(out);
        }
        if ss.ready_to_use != Some(true) {
            // The snapshot's own reason (e.g. a running source) is the clone's.
            out.waiting = snap
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.r#type == "Progressing" && c.status == "False")
                })
                .and_then(|c| c.reason.clone());
            return Ok(out);
        }
        if let Err(reason) = verify_content(&contents, &snap).await? {
            out.failing = Some(("SnapshotContentInvalid", reason));
            return Ok(out);
        }
        ctx.event(
            clone,
            EventType::Normal,
            "SnapshotReady",
            format!("snapshot {snap_name} for clone {name} is ready to use"),
        )
        .await;
        out.snapshot_ready = true;
    }
    if before_restore || phase == PHASE_RESTORE_IN_PROGRESS {
        let restore_name_now = st.restore_name.clone().or(out.restore_name.clone());
        let Some(rname) = restore_name_now else {
            let Some(snap) = snaps.get_opt(&snap_name).await? else {
                out.failing = Some((
                    "SnapshotDeleted",
                    format!("snapshot {snap_name} does not exist anymore"),
                ));
                return Ok(out);
            };
            let content = snap
                .status
                .as_ref()
                .and_then(|s| s.virtual_machine_snapshot_content_name.clone());
            let source_vm = match content {
                Some(c) => contents
                    .get_opt(&c)
                    .await?
                    .and_then(|c| c.spec.source.virtual_machine),
                None => None,
            };
            let Some(source_vm) = source_vm else {
                out.waiting = Some(format!(
                    "cannot get VM manifest from snapshot {snap_name}: no content"
                ));
                return Ok(out);
            };
            let rname = restore_name(&uid);
            let restore = VirtualMachineRestore {
                metadata: ObjectMeta {
                    name: Some(rname.clone()),
                    namespace: Some(ns.into()),
                    owner_references: Some(vec![owner(clone)?]),
                    ..Default::default()
                },
                spec: VirtualMachineRestoreSpec {
                    target: TypedLocalObjectReference {
                        api_group: Some("kubevirt.io".into()),
                        kind: VM_KIND.into(),
                        name: target_name(clone),
                    },
                    virtual_machine_snapshot_name: snap_name.clone(),
                    patches: Some(generate_patches(&source_vm, &clone.spec)),
                    ..Default::default()
                },
                status: None,
            };
            match restores.create(&PostParams::default(), &restore).await {
                Ok(_) => {
                    ctx.event(
                        clone,
                        EventType::Normal,
                        "RestoreCreated",
                        format!("created restore {rname} for clone {name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                    let msg = format!(
                        "failed creating restore {rname} for clone {name}: {}",
                        s.message
                    );
                    ctx.event(
                        clone,
                        EventType::Warning,
                        "RestoreCreationFailed",
                        msg.clone(),
                    )
                    .await;
                    out.waiting = Some(msg);
                    return Ok(out);
                }
                Err(e) => return Err(e.into()),
            }
            out.restore_name = Some(rname);
            return Ok(out);
        };
        let Some(restore) = restores.get_opt(&rname).await? else {
            out.waiting = Some(format!(
                "restore {rname} is not created yet for clone {name}"
            ));
            return Ok(out);
        };
        let rs = restore.status.clone().unwrap_or_default();
        if rs.complete != Some(true) {
            // A restore that cannot proceed says why (a refused patch names it).
            out.waiting = rs
                .conditions
                .iter()
                .flatten()
                .find(|c| c.r#type == "Ready" && c.status == "False")
                .and_then(|c| c.reason.clone());
            return Ok(out);
        }
        ctx.event(
            clone,
            EventType::Normal,
            "RestoreReady",
            format!("restore {rname} for clone {name} is ready to use"),
        )
        .await;
        out.restore_ready = true;
        out.target_name = Some(restore.spec.target.name.clone());
    }
    let target = target_name(clone);
    if phase != PHASE_SUCCEEDED {
        if vms.get_opt(&target).await?.is_none() {
            out.waiting = Some(format!(
                "target VM {target} is not created yet for clone {name}"
            ));
            return Ok(out);
        }
        ctx.event(
            clone,
            EventType::Normal,
            "TargetVMCreated",
            format!("created target VM {target} for clone {name}"),
        )
        .await;
        out.target_created = true;
    }
    // Succeeded: once the target's claims are bound, the temporary objects go.
    if let Some(rname) = st.restore_name.clone().or(out.restore_name.clone()) {
        if let Some(restore) = restores.get_opt(&rname).await? {
            for r in restore.status.and_then(|s| s.restores).unwrap_or_default() {
                let bound = claims
                    .get_opt(&r.persistent_volume_claim)
                    .await?
                    .and_then(|c| c.status)
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p == "Bound");
                if !bound {
                    return Ok(out);
                }
            }
            ctx.event(
                clone,
                EventType::Normal,
                "PVCBound",
                format!("all PVC for clone {name} are bound"),
            )
            .await;
            delete_ignoring_missing(&restores, &rname).await?;
        }
        if from_vm {
            if let Some(s) = &st.snapshot_name {
                delete_ignoring_missing(&snaps, s).await?;
            }
        }
        out.cleaned_up = true;
    }
    Ok(out)
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// KubeVirt's `verifySnapshotContent`: every claim volume of the snapshot's VM is backed up.
async fn verify_content(
    contents: &Api<VirtualMachineSnapshotContent>,
    snap: &VirtualMachineSnapshot,
) -> Result<Result<(), String>, Error> {
    let sname = snap.name_any();
    let Some(cname) = snap
        .status
        .as_ref()
        .and_then(|s| s.virtual_machine_snapshot_content_name.clone())
    else {
        return Ok(Err(format!(
            "cannot get snapshot content name from {sname}"
        )));
    };
    let Some(content) = contents.get_opt(&cname).await? else {
        return Ok(Err(format!(
            "snapshot content {cname} in namespace {} does not exist",
            snap.namespace().unwrap_or_default()
        )));
    };
    let backups = content.spec.volume_backups.clone().unwrap_or_default();
    let vols = content
        .spec
        .source
        .virtual_machine
        .as_ref()
        .and_then(|v| v.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let missing: Vec<String> = vols
        .iter()
        .filter(|v| v.persistent_volume_claim.is_some() || v.data_volume.is_some())
        .filter(|v| !backups.iter().any(|b| b.volume_name == v.name))
        .map(|v| format!("volume {} is not backed up in snapshot {sname}", v.name))
        .collect();
    if missing.is_empty() {
        Ok(Ok(()))
    } else {
        Ok(Err(missing.join("\n")))
    }
}

pub fn error_policy(c: Arc<VirtualMachineClone>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(clone = %c.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn source() -> SnapshotVirtualMachine {
        serde_json::from_value(json!({
            "metadata": {"name": "src", "labels": {"app": "web", "team/a": "x", "keep-me": "1"},
                "annotations": {"restore.kubevirt.io/lastRestoreUID": "r-1", "note": "n"}},
            "spec": {"template": {
                "metadata": {"labels": {"kubevirt.io/vm": "src", "tier": "1"}},
                "spec": {"domain": {
                    "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223", "serial": "S1"},
                    "devices": {"interfaces": [
                        {"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"},
                        {"name": "second", "bridge": {}},
                        {"name": "third", "bridge": {}, "macAddress": "02:00:00:00:00:03"}]}}}}}
        }))
        .expect("source VM")
    }

    #[test]
    fn patches_clear_macs_serial_and_uuid_and_filter_labels() {
        let spec = VirtualMachineCloneSpec {
            label_filters: Some(vec!["*".into(), "!team/*".into()]),
            annotation_filters: Some(vec!["nothing".into()]),
            new_mac_addresses: Some(BTreeMap::from([(
                "third".to_string(),
                "02:aa:bb:cc:dd:ee".to_string(),
            )])),
            template: Some(kubevirt_api::VirtualMachineCloneTemplateFilters {
                label_filters: Some(vec!["kubevirt.io/*".into()]),
                annotation_filters: None,
            }),
            patches: Some(vec![
                r#"{"op":"add","path":"/metadata/labels/extra","value":"y"}"#.into(),
            ]),
            ..Default::default()
        };
        let p = generate_patches(&source(), &spec);
        let p: Vec<serde_json::Value> = p
            .iter()
            .map(|s| serde_json::from_str(s).expect("json"))
            .collect();
        let want = [
            json!({"op": "remove", "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress"}),
            json!({"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/2/macAddress", "value": "02:aa:bb:cc:dd:ee"}),
            json!({"op": "remove", "path": "/spec/template/spec/domain/firmware/serial"}),
            json!({"op": "remove", "path": "/metadata/labels/team~1a"}),
            json!({"op": "remove", "path": "/metadata/annotations/note"}),
            json!({"op": "remove", "path": "/spec/template/metadata/labels/tier"}),
            json!({"op": "remove", "path": "/spec/template/spec/domain/firmware/uuid"}),
            json!({"op": "add", "path": "/metadata/labels/extra", "value": "y"}),
        ];
        assert_eq!(p, want);
        // Applied by the restore: the new VM has none of the source's identity.
        let vm = crate::restore::new_target_vm(&source(), "dst", "ns", &BTreeMap::new(), "r-2");
        let patches = generate_patches(&source(), &spec);
        let out = crate::restore::patch_vm(&vm, &patches).expect("patches apply");
        let labels = out.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert!(!labels.contains_key("team/a"));
        assert_eq!(labels.get("extra").map(String::as_str), Some("y"));
        let t = out.spec.template.spec.expect("template");
        let ifs = t.domain.devices.interfaces.expect("interfaces");
        assert_eq!(ifs[0].mac_address, None);
        assert_eq!(ifs[2].mac_address.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        let fw = t.domain.firmware.expect("firmware");
        assert_eq!((fw.uuid, fw.serial), (None, None));
        assert_eq!(
            out.metadata
                .annotations
                .and_then(|a| a.get(LAST_RESTORE_ANNOTATION).cloned())
                .as_deref(),
            Some("r-2")
        );
    }

    #[test]
    fn filters_follow_kubevirts_documented_rules() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(key_kept("anything", &f(&["*"])));
        assert!(key_kept("app/x", &f(&["app/*"])));
        assert!(
            !key_kept("myapp/x", &f(&["app/*"])),
            "a prefix, not a regex"
        );
        assert!(!key_kept("app", &f(&["*", "!app"])));
        assert!(!key_kept("a.b", &f(&["a*b"])), "`*` is special only last");
        assert!(!key_kept("x", &f(&[])));
        // Regex syntax is never compiled: a hostile filter is a literal.
        assert!(!key_kept("aaaa", &f(&["(a+)+$"])));
    }

    #[test]
    fn names_are_kubevirts() {
        assert_eq!(snapshot_name("u"), "tmp-snapshot-u");
        assert_eq!(restore_name("u"), "tmp-restore-u");
        let mut c = VirtualMachineClone::new("c", VirtualMachineCloneSpec::default());
        c.spec.source.name = "vm".into();
        c.metadata.uid = Some("ab-cdef".into());
        assert_eq!(target_name(&c), "clone-vm-abcde");
        c.spec.target = Some(TypedLocalObjectReference {
            api_group: None,
            kind: VM_KIND.into(),
            name: "dst".into(),
        });
        assert_eq!(target_name(&c), "dst");
    }
}
